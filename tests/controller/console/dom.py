"""A page as a tree, with the standard library's parser: enough to ask for `tr[data-host=x]
td.state` in tests without a browser."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Node | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The text inside, whitespace squeezed, as a reader sees it."""
        parts = [c if isinstance(c, str) else c.text for c in self.children]
        return " ".join(" ".join(parts).split())

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def all(self, tag: str = "", cls: str = "", **attrs: str) -> Iterator[Node]:
        """Descendants by tag, class and attributes (`data_host="x"` is `data-host`)."""
        for child in self.children:
            if isinstance(child, str):
                continue
            wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
            if (
                (not tag or child.tag == tag)
                and (not cls or cls in child.classes())
                and all(child.attrs.get(k) == v for k, v in wanted.items())
            ):
                yield child
            yield from child.all(tag, cls, **attrs)

    def one(self, tag: str = "", cls: str = "", **attrs: str) -> Node:
        found = list(self.all(tag, cls, **attrs))
        assert len(found) == 1, f"{len(found)} <{tag} {cls} {attrs}>"
        return found[0]

    def has(self, tag: str = "", cls: str = "", **attrs: str) -> bool:
        return next(self.all(tag, cls, **attrs), None) is not None


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document")
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root
