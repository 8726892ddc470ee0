/* imaging-lake portal: progressive enhancement only; every page works without it. */
(function () {
  "use strict";

  // Copy buttons (tokens, share links, notebook code).
  document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      var text = button.getAttribute("data-copy") || "";
      if (navigator.clipboard) {
        navigator.clipboard.writeText(text).then(function () {
          button.textContent = "Copied";
        });
      }
    });
  });

  // Ask before revoking or removing.
  document.querySelectorAll("form.confirm[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) {
        event.preventDefault();
      }
    });
  });

  // A background job's progress, polled until it finishes.
  var job = document.querySelector(".job[data-job]");
  if (job && ["done", "failed"].indexOf(job.getAttribute("data-state")) < 0) {
    var id = job.getAttribute("data-job");
    var bar = document.getElementById("job-progress");
    var state = document.getElementById("job-state");
    var count = document.getElementById("job-count");
    var poll = function () {
      fetch("/portal/jobs/" + id + "/status", { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (status) {
          if (!status) { return; }
          bar.max = Math.max(1, status.total);
          bar.value = status.done;
          state.textContent = status.state;
          state.className = "badge state-" + status.state;
          count.textContent = status.done + " of " + (status.total || "?") + " series";
          if (status.state === "done" || status.state === "failed") {
            window.location.reload();
            return;
          }
          window.setTimeout(poll, 1000);
        })
        .catch(function () { window.setTimeout(poll, 3000); });
    };
    window.setTimeout(poll, 500);
  }
})();
