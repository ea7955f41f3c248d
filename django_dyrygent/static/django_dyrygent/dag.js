/* django_dyrygent: refresh a running workflow's admin page in place.
   Polls <workflow>/status.json, recolours the SVG nodes by class, updates the
   progress, and stops once the workflow is final. No framework, no CDN. */
(function () {
  "use strict";

  function start() {
    var panel = document.getElementById("dy-panel");
    if (!panel || panel.dataset.final === "true") {
      return;
    }
    var statusUrl = panel.dataset.statusUrl;
    var dagUrl = panel.dataset.dagUrl;
    var interval = parseInt(panel.dataset.pollInterval, 10) || 2000;
    var failures = 0;

    function setState(el, state) {
      var keep = Array.prototype.filter.call(el.classList, function (c) {
        return c.indexOf("dy-s-") !== 0;
      });
      keep.push("dy-s-" + state);
      el.setAttribute("class", keep.join(" "));
    }

    function setTooltipState(el, state) {
      var title = el.querySelector("title");
      if (!title) {
        return;
      }
      title.textContent = title.textContent.split("\n").map(function (line) {
        return line.indexOf("state: ") === 0 ? "state: " + state : line;
      }).join("\n");
    }

    function redraw() {
      /* The graph grew (a fan-out expanded) or the workflow ended: fetch the
         server-rendered, escaped SVG again for fresh boxes and tooltips. */
      return fetch(dagUrl, {credentials: "same-origin"}).then(function (response) {
        if (!response.ok) {
          throw new Error("dag " + response.status);
        }
        return response.text();
      }).then(function (svg) {
        document.getElementById("dy-dag").innerHTML = svg;
      });
    }

    function apply(status) {
      var badge = document.getElementById("dy-state");
      setState(badge, status.state);
      badge.textContent = status.state_label;
      var progress = document.getElementById("dy-progress");
      progress.max = status.nodes_total || 1;
      progress.value = status.nodes_total ? status.nodes_done : 0;
      document.getElementById("dy-counts").textContent =
        status.nodes_done + " / " + status.nodes_total + " done, " + status.nodes_failed + " failed";
      var svg = document.querySelector("#dy-dag svg");
      if (!svg || svg.dataset.shape !== status.shape || status.final) {
        return redraw();
      }
      Object.keys(status.items).forEach(function (id) {
        var item = status.items[id];
        var el = document.getElementById("dy-" + id);
        if (!el) {
          return;
        }
        setState(el, item.state);
        if (item.text !== undefined) {
          var sub = el.querySelector("text.dy-sub");
          if (sub) {
            sub.textContent = item.text;
          }
          var bar = el.querySelector("rect.dy-bar");
          if (bar) {
            bar.setAttribute("width", item.bar);
          }
        } else {
          setTooltipState(el, item.state);
        }
      });
      return null;
    }

    function poll() {
      fetch(statusUrl, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (response) {
          if (!response.ok) {
            throw new Error("status " + response.status);
          }
          return response.json();
        })
        .then(function (status) {
          failures = 0;
          return Promise.resolve(apply(status)).then(function () {
            if (status.final) {
              panel.dataset.final = "true";
              document.getElementById("dy-live").hidden = true;
            } else {
              window.setTimeout(poll, interval);
            }
          });
        })
        .catch(function () {
          /* Keep trying for a while (server restart, network), then give up quietly. */
          failures += 1;
          if (failures < 10) {
            window.setTimeout(poll, interval * failures);
          } else {
            document.getElementById("dy-live").hidden = true;
          }
        });
    }

    window.setTimeout(poll, interval);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
