/* django_dyrygent: refresh a running workflow's admin page in place.
   Polls <workflow>/status.json and updates everything that can change: the
   state, the progress bar, the read-only fields (timing, counters, error), the
   event list, which action buttons can act, the banner saying no worker is
   alive, and the SVG nodes (recoloured by class). Stops once the workflow is
   final. On the workflow list, polls the workers' banner alone, at the
   interval picked on a workflow's page. No framework, no CDN.
   HTML pieces in the status are rendered and escaped by the server. */
(function () {
  "use strict";

  function confirmActions() {
    /* Buttons whose form carries data-confirm ask first (Cancel cannot be undone). */
    Array.prototype.forEach.call(document.querySelectorAll("form[data-confirm]"), function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) {
          event.preventDefault();
        }
      });
    });
  }

  var STORED = "django_dyrygent.refresh";  /* the chosen interval, kept for the next pages */

  function setHtml(el, html) {
    /* Compared with the last HTML received, not with innerHTML (the browser
       re-serialises it): an unchanged part is not rebuilt, so a selection survives. */
    if (el && el.dyHtml !== html) {
      el.innerHTML = html;
      el.dyHtml = html;
    }
  }

  function getJson(url) {
    return fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) {
        if (!response.ok) {
          throw new Error(url + " " + response.status);
        }
        return response.json();
      });
  }

  function watchWorkers() {
    /* The list's banner comes and goes with the heartbeats; the list itself is not redrawn. */
    var box = document.getElementById("dy-worker-warning-box");
    if (!box || !box.dataset.url) {
      return;
    }
    var kept = window.localStorage ? parseInt(window.localStorage.getItem(STORED), 10) : NaN;
    var interval = kept || parseInt(box.dataset.pollInterval, 10) || 5000;
    var failures = 0;

    function poll() {
      getJson(box.dataset.url)
        .then(function (status) {
          failures = 0;
          setHtml(box, status.worker_warning);
          window.setTimeout(poll, interval);
        })
        .catch(function () {
          failures += 1;
          if (failures < 10) {
            window.setTimeout(poll, interval * failures);
          }
        });
    }

    window.setTimeout(poll, interval);
  }

  function start() {
    confirmActions();
    watchWorkers();
    var panel = document.getElementById("dy-panel");
    if (!panel || panel.dataset.final === "true") {
      return;
    }
    var statusUrl = panel.dataset.statusUrl;
    var dagUrl = panel.dataset.dagUrl;
    var interval = parseInt(panel.dataset.pollInterval, 10) || 2000;
    var failures = 0;
    var paused = false;
    var timer = null;
    var live = document.getElementById("dy-live");
    var pause = document.getElementById("dy-pause");
    var every = document.getElementById("dy-interval");

    function schedule(ms) {
      window.clearTimeout(timer);
      timer = paused ? null : window.setTimeout(poll, ms);
    }

    function stopped() {
      live.hidden = true;
      var controls = document.getElementById("dy-refresh");
      if (controls) {
        controls.hidden = true;
      }
    }

    if (every) {
      var kept = window.localStorage ? window.localStorage.getItem(STORED) : null;
      /* The page's own interval until the person picks one; then theirs, on every page. */
      if (kept && every.querySelector('option[value="' + kept + '"]')) {
        every.value = kept;
        interval = parseInt(kept, 10) || interval;
      }
      every.addEventListener("change", function () {
        interval = parseInt(every.value, 10) || interval;
        if (window.localStorage) {
          window.localStorage.setItem(STORED, every.value);
        }
        schedule(interval);
      });
    }
    if (pause) {
      pause.addEventListener("click", function () {
        paused = !paused;
        panel.dataset.refresh = paused ? "paused" : "live";
        pause.textContent = paused ? pause.dataset.resume : pause.dataset.pause;
        live.classList.toggle("dy-paused", paused);
        schedule(0);
      });
    }

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

    function applyPage(status) {
      var badge = document.getElementById("dy-state");
      setState(badge, status.state);
      badge.textContent = status.state_label;
      setHtml(document.getElementById("dy-progress-box"), status.progress);
      Object.keys(status.fields || {}).forEach(function (name) {
        setHtml(document.querySelector(".field-" + name + " .readonly"), status.fields[name]);
      });
      if (status.events !== undefined) {
        setHtml(document.getElementById("dy-events"), status.events);
      }
      if (status.worker_warning !== undefined) {
        setHtml(document.getElementById("dy-worker-warning-box"), status.worker_warning);
      }
      Object.keys(status.actions || {}).forEach(function (name) {
        var form = document.querySelector("form[data-action='" + name + "']");
        if (form) {
          form.hidden = !status.actions[name];
        }
      });
    }

    function apply(status) {
      applyPage(status);
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
      getJson(statusUrl)
        .then(function (status) {
          failures = 0;
          return Promise.resolve(apply(status)).then(function () {
            if (status.final) {
              panel.dataset.final = "true";
              stopped();
            } else {
              schedule(interval);
            }
          });
        })
        .catch(function () {
          /* Keep trying for a while (server restart, network), then give up quietly. */
          failures += 1;
          if (failures < 10) {
            schedule(interval * failures);
          } else {
            stopped();
          }
        });
    }

    schedule(interval);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
