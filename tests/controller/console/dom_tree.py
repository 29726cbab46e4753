"""A page's elements for assertions, parsed with the standard library's HTMLParser."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
# Elements whose end tag HTML lets a page leave out before a sibling of the same kind.
SIBLINGS = {"option", "li", "p", "tr", "td", "th"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list, repr=False)
    content: list[str | Node] = field(default_factory=list, repr=False)  # text and children

    @property
    def text(self) -> str:
        """The text inside, children's included, spaces squeezed."""
        return " ".join("".join(self._texts()).split())

    def _texts(self) -> list[str]:
        out: list[str] = []
        for part in self.content:
            out += [part] if isinstance(part, str) else part._texts()
        return out

    def add(self, child: Node) -> None:
        self.children.append(child)
        self.content.append(child)

    def all(self, tag: str = "*", **attrs: str) -> list[Node]:
        """Descendants of `tag` whose attributes hold the given values (`class_` for class;
        a value of "*" only needs the attribute; `data_job` is data-job)."""
        found = []
        want = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        for child in self.children:
            if (tag in ("*", child.tag)) and all(
                k in child.attrs and (v == "*" or v in _values(k, child.attrs[k]))
                for k, v in want.items()
            ):
                found.append(child)
            found += child.all(tag, **attrs)
        return found

    def one(self, tag: str = "*", **attrs: str) -> Node:
        found = self.all(tag, **attrs)
        assert len(found) == 1, f"{len(found)} <{tag} {attrs}> on the page"
        return found[0]


def _values(key: str, value: str) -> list[str]:
    return [*value.split(), value] if key == "class" else [value]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        if tag in SIBLINGS and self.stack[-1].tag == tag:
            self.stack.pop()
        self.stack[-1].add(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].add(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].content.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root
