// A template form's program select: another program has other parameters, so the page is
// asked again for it (GET, the other fields kept in the URL; the CSRF token never is).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const select of document.querySelectorAll("select[data-reload-on-change]")) {
    select.addEventListener("change", () => {
      const form = select.form;
      const query = new URLSearchParams();
      for (const [name, value] of new FormData(form)) {
        if (name === "csrf" || name.startsWith("params.") || name === "source") continue;
        if (typeof value === "string" && value !== "") query.append(name, value);
      }
      const target = form.dataset.reload || window.location.pathname;
      window.location.assign(`${target}?${query.toString()}`);
    });
  }
});
