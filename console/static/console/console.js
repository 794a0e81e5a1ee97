// MegaRouter console: a light touch of JavaScript. Every page works without it.
(function () {
  "use strict";

  function announce(text) {
    var live = document.getElementById("live-status");
    if (live) { live.textContent = ""; window.setTimeout(function () { live.textContent = text; }, 50); }
  }

  // Copy buttons: <button data-copy="#input-id">. Clipboard API, else select + execCommand.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.value !== undefined ? source.value : source.textContent;
    var done = function () {
      var label = button.querySelector(".label") || button;
      var before = label.textContent;
      label.textContent = "Copied";
      button.setAttribute("data-copied", "true");
      announce("Copied to the clipboard");
      window.setTimeout(function () { label.textContent = before; }, 2000);
    };
    var fallback = function () {
      source.focus();
      source.select();
      try { document.execCommand("copy"); done(); } catch (e) { announce("Press Ctrl+C to copy"); }
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, fallback);
    } else {
      fallback();
    }
  });

  // Forms that destroy something ask first: <form data-confirm="Revoke this key?">.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  // Slugs follow the name until edited by hand: <input data-slug-from="id_name">.
  document.querySelectorAll("[data-slug-from]").forEach(function (slug) {
    var name = document.getElementById(slug.getAttribute("data-slug-from"));
    if (!name) return;
    var touched = slug.value !== "";
    slug.addEventListener("input", function () { touched = slug.value !== ""; });
    name.addEventListener("input", function () {
      if (touched) return;
      slug.value = name.value.toLowerCase().normalize("NFKD").replace(/[\u0300-\u036f]/g, "")
        .replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 80);
    });
  });

  // The sidebar drawer on small screens.
  var toggle = document.querySelector(".menu-toggle");
  var sidebar = document.getElementById("sidebar");
  if (toggle && sidebar) {
    toggle.addEventListener("click", function () {
      var open = sidebar.classList.toggle("open");
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && sidebar.classList.contains("open")) {
        sidebar.classList.remove("open");
        toggle.setAttribute("aria-expanded", "false");
        toggle.focus();
      }
    });
  }

  // Catalog pickers under policy lists: <textarea data-picker="models"> gets an input that
  // suggests the catalog's entries (<datalist id="choices-models">) and an Add button that
  // appends the entry as a new line. Without JavaScript the list is typed by hand.
  document.querySelectorAll("textarea[data-picker]").forEach(function (area) {
    var kind = area.getAttribute("data-picker");
    if (!document.getElementById("choices-" + kind)) return;
    var row = document.createElement("div");
    row.className = "picker";
    var input = document.createElement("input");
    input.type = "text";
    input.setAttribute("list", "choices-" + kind);
    input.setAttribute("aria-label", "Add to " + (area.labels && area.labels[0] ? area.labels[0].textContent.trim() : kind));
    input.placeholder = "Pick or type a " + kind.replace(/s$/, "") + ", or a pattern";
    var add = document.createElement("button");
    add.type = "button";
    add.className = "btn small";
    add.textContent = "Add";
    var append = function () {
      var value = input.value.trim();
      if (!value) return;
      var lines = area.value.split("\n").map(function (l) { return l.trim(); }).filter(Boolean);
      if (lines.indexOf(value) === -1) lines.push(value);
      area.value = lines.join("\n");
      input.value = "";
      announce("Added " + value);
      input.focus();
    };
    add.addEventListener("click", append);
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter") { event.preventDefault(); append(); }
    });
    row.appendChild(input);
    row.appendChild(add);
    area.insertAdjacentElement("afterend", row);
  });

  // Filter forms: changing a select submits (the Filter button stays for keyboards).
  document.querySelectorAll("form.filters select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });
})();
