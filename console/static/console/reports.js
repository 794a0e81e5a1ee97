// Reports page: while a report is pending or running, poll the small JSON status view every
// 1.5 s and update its row (progress bar, then the download link). Without JavaScript the
// page says to reload.
(function () {
  "use strict";
  var table = document.querySelector("table[data-poll]");
  if (!table) return;
  var url = table.getAttribute("data-poll");

  function busyIds() {
    return Array.prototype.map.call(
      table.querySelectorAll("tr[data-status=pending], tr[data-status=running]"),
      function (row) { return row.getAttribute("data-report"); });
  }

  function update(report) {
    var row = table.querySelector('tr[data-report="' + report.id + '"]');
    if (!row) return;
    var finished = report.status === "done" || report.status === "failed";
    if (finished && row.getAttribute("data-status") !== report.status) {
      window.location.reload(); // the server renders the finished row (sizes, link, error)
      return;
    }
    row.setAttribute("data-status", report.status);
    var bar = row.querySelector("[role=progressbar]");
    if (bar) {
      bar.setAttribute("aria-valuenow", String(report.progress));
      bar.firstElementChild.style.width = report.progress + "%";
    }
    var badge = row.querySelector(".report-status .badge");
    if (badge) badge.textContent = report.status === "running" ? "Running" : "Pending";
  }

  function poll() {
    var ids = busyIds();
    if (!ids.length) return;
    fetch(url + "?ids=" + ids.join(","), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : { reports: [] }; })
      .then(function (data) { data.reports.forEach(update); })
      .catch(function () {})
      .then(function () { window.setTimeout(poll, 1500); });
  }
  window.setTimeout(poll, 1500);
})();
