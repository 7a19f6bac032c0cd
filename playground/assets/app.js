// Calls /echo and lists which backend answered, to show the balancer at work.
(function () {
  "use strict";
  var button = document.getElementById("probe");
  var list = document.getElementById("probes");
  if (!button || !list) {
    return;
  }
  button.addEventListener("click", function () {
    fetch("/echo/probe", { cache: "no-store" })
      .then(function (res) { return res.json(); })
      .then(function (data) {
        var item = document.createElement("li");
        item.textContent = "answered by " + data.hostname;
        list.appendChild(item);
      })
      .catch(function (err) {
        var item = document.createElement("li");
        item.textContent = "request failed: " + err;
        list.appendChild(item);
      });
  });
})();
