// fleettrace job page: follows the job's events and updates the page in place; when the job
// ends, it inserts the report. The page is complete without it (reload shows the same).
"use strict";

(() => {
  const FINAL_RUN = new Set(["succeeded", "failed", "timed_out", "cancelled", "expired", "unsupported"]);
  const FINAL_JOB = new Set(["succeeded", "partial", "failed", "cancelled"]);

  function setState(element, state) {
    element.textContent = state;
    element.className = `state ${state}`;
  }

  function utc(date) {
    return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function why(cell, data) {
    // Text only: a reason or an error message comes from an agent.
    cell.replaceChildren();
    if (data.reason) {
      const reason = document.createElement("span");
      reason.className = "reason";
      reason.textContent = data.reason;
      cell.append(reason, " ");
    }
    if (data.error) {
      const error = document.createElement("span");
      error.className = "error";
      error.textContent = `${data.error.code || "error"}: ${data.error.message || ""}`;
      cell.append(error);
      if (data.error.detail) {
        const details = document.createElement("details");
        const summary = document.createElement("summary");
        const pre = document.createElement("pre");
        summary.textContent = "log";
        pre.textContent = data.error.detail;
        details.append(summary, pre);
        cell.append(details);
      }
    }
  }

  function follow(article) {
    const job = article.dataset.job;
    const rows = new Map();
    for (const row of article.querySelectorAll("tr[data-host]")) rows.set(row.dataset.host, row);
    const jobState = document.getElementById("job-state");
    let reportAsked = false;

    async function showReport() {
      if (reportAsked || document.getElementById("report")) return;
      reportAsked = true;
      const answer = await fetch(`/jobs/${encodeURIComponent(job)}/report${window.location.search}`, {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      });
      if (!answer.ok) {
        reportAsked = false;
        return;
      }
      const made = document.createElement("template");
      made.innerHTML = await answer.text();
      const waiting = document.getElementById("report-pending");
      if (waiting) waiting.replaceWith(made.content);
      else article.append(made.content);
      await refreshRuns();
    }

    // Once the job is final, the hosts' rows as the server has them: a run's last snapshot can
    // be stored after the stream ended (results and states travel on different streams), and
    // the times the page filled in were the browser's clock.
    async function refreshRuns() {
      const answer = await fetch(window.location.pathname, {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      });
      if (!answer.ok) return;
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.querySelector("#runs tbody");
      const here = document.querySelector("#runs tbody");
      if (fresh && here) here.replaceWith(document.adoptNode(fresh));
    }

    function jobIs(state) {
      setState(jobState, state);
      if (FINAL_JOB.has(state)) {
        document.getElementById("job-finished").textContent = utc(new Date());
        const cancel = document.getElementById("cancel");
        if (cancel) cancel.remove();
        showReport();
      }
    }

    const source = new EventSource(
      `/jobs/${encodeURIComponent(job)}/events?after=${encodeURIComponent(article.dataset.after)}`,
    );
    source.addEventListener("state", (event) => {
      const data = JSON.parse(event.data);
      const row = rows.get(data.host);
      if (!row) return;
      setState(row.querySelector("td.state"), data.state);
      why(row.querySelector("td.why"), data);
      const now = utc(new Date());
      if (data.state === "running" && row.querySelector("td.started").textContent.trim() === "—") {
        row.querySelector("td.started").textContent = now;
      }
      if (FINAL_RUN.has(data.state)) row.querySelector("td.finished").textContent = now;
      // The job runs once one of its hosts does (its final state comes as its own event).
      if (data.state === "running" && jobState.textContent === "pending") jobIs("running");
    });
    source.addEventListener("snapshot", (event) => {
      const data = JSON.parse(event.data);
      const row = rows.get(data.host);
      if (!row) return;
      const cell = row.querySelector("td.snapshots");
      // Sequence numbers count from 0: seeing one twice (a replay) changes nothing.
      cell.textContent = String(Math.max(Number(cell.textContent) || 0, data.seq + 1));
    });
    source.addEventListener("job", (event) => jobIs(JSON.parse(event.data).state));
    source.addEventListener("end", () => {
      source.close();
      showReport();
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const article = document.getElementById("job");
    if (article && article.dataset.final !== "true") follow(article);
  });
})();
