// Slipway's one script: times in the viewer's zone, live fragments and deploy panes from
// Server-Sent Events (the markup comes from the server), and the ref picker's "resolves to".
// Every page works without it; it only keeps pages current without reloading them.
"use strict";
(function () {
  var lang = document.documentElement.lang || undefined;
  var fmt = new Intl.DateTimeFormat(lang, { dateStyle: "medium", timeStyle: "medium" });

  function localTimes(root) {
    root.querySelectorAll("time[data-ts]").forEach(function (t) {
      var d = new Date(Number(t.dataset.ts) * 1000);
      t.title = t.textContent.indexOf("UTC") < 0 ? t.textContent + " UTC" : t.textContent;
      t.textContent = fmt.format(d);
    });
    // The ref picker's options carry their commit's time in the text (options hold no markup).
    root.querySelectorAll("option[data-ts][data-utc]").forEach(function (o) {
      o.textContent = o.textContent.replace(o.dataset.utc, fmt.format(new Date(Number(o.dataset.ts) * 1000)));
    });
  }

  // A scheduled ticket's countdown: "in 1h 02m 03s", every second.
  function countdowns() {
    var now = Date.now() / 1000;
    document.querySelectorAll(".countdown[data-until]").forEach(function (c) {
      var left = Math.max(0, Math.round(Number(c.dataset.until) - now));
      var h = Math.floor(left / 3600), m = Math.floor(left % 3600 / 60), s = left % 60;
      var two = function (n) { return (n < 10 ? "0" : "") + n; };
      c.textContent = left > 0 ? "(in " + (h > 0 ? h + "h " : "") + two(m) + "m " + two(s) + "s)" : "";
    });
  }
  setInterval(countdowns, 1000);

  function replace(el, html) {
    var tpl = document.createElement("template");
    tpl.innerHTML = html;
    var fresh = tpl.content.firstElementChild;
    if (!fresh) return;
    el.replaceWith(fresh);
    localTimes(fresh);
  }

  // The streams this page has open. A page left for another is closed (pagehide): the
  // browser's back/forward cache keeps left pages alive, and their streams would hold
  // HTTP/1.1's six connections until the next page could not load. A page restored from that
  // cache opens them again (pageshow), from where it had got to.
  var open = [];

  function stream(url) {
    var source = new EventSource(url);
    open.push(source);
    return source;
  }

  // Fragments by key (dashboard cells, a ticket's head); "reload" when the set changed.
  function fragments(root) {
    var source = stream(root.dataset.live);
    source.addEventListener("fragment", function (ev) {
      var f = JSON.parse(ev.data);
      // A ticket that started another deploy since its page was drawn: new panes, a new page.
      if (f.key.indexOf("deploys:") === 0 && root.dataset.deploys !== undefined && f.key.slice(8) !== root.dataset.deploys) {
        source.close();
        window.location.reload();
        return;
      }
      root.querySelectorAll("[data-key]").forEach(function (el) {
        if (el.dataset.key === f.key) replace(el, f.html);
      });
    });
    source.addEventListener("reload", function () {
      source.close();
      window.location.reload();
    });
  }

  function pane(section, host) {
    var found = null;
    section.querySelectorAll(".panes .pane").forEach(function (p) {
      if (p.dataset.host === host) found = p;
    });
    return found;
  }

  // One pane per host, filled from the deploy's journal after the events already shown.
  function panes(section) {
    if (section.querySelector(".outcome-slot").children.length) return; // over: replayed
    var url = "/deploys/" + section.dataset.deploy + "/live?after=" + section.dataset.after;
    var source = stream(url);
    source.addEventListener("piece", function (ev) {
      var p = JSON.parse(ev.data);
      if (ev.lastEventId) section.dataset.after = ev.lastEventId; // (where a reopened stream resumes)
      (p.panes || []).forEach(function (hp) {
        if (!pane(section, hp[0])) section.querySelector(".panes").insertAdjacentHTML("beforeend", hp[1]);
      });
      var box = p.host ? pane(section, p.host) : section.querySelector(".pane.controller");
      if (box && p.line) {
        var log = box.querySelector(".log");
        log.insertAdjacentHTML("beforeend", p.line);
        log.scrollTop = log.scrollHeight;
      }
      if (box && p.progress) {
        var bar = box.querySelector(".bar");
        bar.hidden = false;
        bar.querySelector("progress").value = p.progress.pct;
        bar.querySelector(".label").textContent = p.progress.label;
      }
      if (box && p.state) box.querySelector(".state").innerHTML = p.state;
      if (p.outcome) {
        section.querySelector(".outcome-slot").innerHTML = p.outcome;
        source.close();
      }
    });
  }

  // The ref picker: the commit the chosen branch, tag or commit resolves to.
  function picker(select) {
    function show() {
      var o = select.options[select.selectedIndex];
      if (!o) return;
      document.getElementById("resolved").textContent = (o.dataset.commit || "").slice(0, 7);
      document.getElementById("resolved-subject").textContent = o.dataset.subject || "";
    }
    select.addEventListener("change", show);
    show();
  }

  function listen() {
    document.querySelectorAll("[data-live]").forEach(fragments);
    document.querySelectorAll("section.deploy[data-deploy]").forEach(panes);
  }

  window.addEventListener("pagehide", function () {
    open.forEach(function (s) { s.close(); });
    open = [];
  });
  window.addEventListener("pageshow", function (ev) {
    if (ev.persisted) listen();
  });

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    listen();
    var ref = document.querySelector("select#ref");
    if (ref) picker(ref);
  });
})();
