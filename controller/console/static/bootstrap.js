// Hosts in: a bootstrap's per-host, per-step progress, polled every second until it is final.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const poll = async () => {
    const shown = document.getElementById("progress");
    if (!shown || shown.dataset.final === "true") return;
    try {
      const answer = await fetch(shown.dataset.progress, { credentials: "same-origin" });
      if (answer.redirected || answer.status === 401 || answer.status === 403) {
        shown.insertAdjacentHTML("afterbegin", '<p class="error">Signed out: reload to go on watching.</p>');
        return;
      }
      if (answer.ok) {
        const fresh = new DOMParser().parseFromString(await answer.text(), "text/html").getElementById("progress");
        if (fresh) shown.replaceWith(document.adoptNode(fresh));
      }
    } catch (error) {
      // The controller restarting, or a network blip: the next poll tries again.
    }
    window.setTimeout(poll, 1000);
  };
  window.setTimeout(poll, 1000);
});
