// mailgate's one script: refreshes the dashboard's counts from /status every 5 s, so the
// page stays current without reloading. Pages work without it; nothing here writes markup.
"use strict";
(function () {
  if (!document.getElementById("count-queued")) return;
  var set = function (id, v) { var e = document.getElementById(id); if (e) e.textContent = String(v); };
  var tick = function () {
    fetch("/status", { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (s) {
      set("count-queued", s.queue.queued); set("count-deferred", s.queue.deferred);
      set("count-sending", s.queue.sending);
      set("count-sent", s.records.sent); set("count-partial", s.records.partial); set("count-failed", s.records.failed);
      set("total-accepted", s.totals.accepted); set("total-rejected", s.totals.rejected);
      set("distributor-state", s.distributor.paused ? "paused" : "running");
    }).catch(function () {});
  };
  setInterval(tick, 5000);
})();
