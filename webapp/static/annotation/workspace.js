// The annotate page's keyboard, active-time clock and small helpers. Items are swapped into
// #item by htmx, so every handler is delegated from the document and reads the DOM afresh.
(function () {
  "use strict";

  const IDLE_MS = 30000;
  let activeMs = 0;
  let lastTick = Date.now();
  let lastInteraction = Date.now();
  let selectedCard = null;

  // Active time: counted while the tab is visible and the annotator did something recently.
  function tick() {
    const now = Date.now();
    if (document.visibilityState === "visible" && now - lastInteraction < IDLE_MS) {
      activeMs += now - lastTick;
    }
    lastTick = now;
  }
  setInterval(tick, 1000);
  ["keydown", "pointerdown", "scroll", "input"].forEach(function (name) {
    document.addEventListener(name, function () { lastInteraction = Date.now(); }, { capture: true, passive: true });
  });
  document.addEventListener("visibilitychange", function () { tick(); });

  // Before htmx reads the form, put the measured time into it.
  document.addEventListener("submit", function (event) {
    const field = event.target.querySelector && event.target.querySelector("input[name=active_ms]");
    if (field) {
      tick();
      field.value = String(Math.round(activeMs));
    }
  }, true);

  document.addEventListener("htmx:afterSwap", function (event) {
    const error = event.detail.target && event.detail.target.querySelector(".ws-error[data-field]");
    document.querySelectorAll("#item .ws-field-error").forEach(function (old) { old.remove(); });
    if (error) {
      // Point at the question (or the text box) the server refused, and say why beside it.
      const field = error.dataset.field;
      const fieldset = document.querySelector('fieldset[data-key="' + CSS.escape(field) + '"]');
      if (fieldset) { fieldset.classList.add("q-missing"); fieldset.focus(); }
      const box = fieldset ? null : document.querySelector('#item textarea[name="' + CSS.escape(field) + '"]');
      if (fieldset || box) {
        const note = document.createElement("p");
        note.className = "ws-field-error";
        note.textContent = error.querySelector("p").textContent.trim();
        if (fieldset) fieldset.appendChild(note); else box.insertAdjacentElement("afterend", note);
      }
    }
    if (event.detail.target && event.detail.target.id === "item") {
      activeMs = 0;
      lastTick = lastInteraction = Date.now();
      selectedCard = null;
      const form = itemForm();
      if (form) window.scrollTo({ top: 0 });
    }
  });

  function itemForm() { return document.getElementById("item-form"); }
  function openDialog() { return document.querySelector("dialog[open]"); }

  function isTyping(target) {
    if (!target || !target.tagName) return false;
    const tag = target.tagName.toLowerCase();
    return tag === "textarea" || (tag === "input" && !["radio", "checkbox", "hidden"].includes(target.type)) || target.isContentEditable;
  }

  function check(input) {
    if (!input) return false;
    input.checked = true;
    input.dispatchEvent(new Event("change", { bubbles: true }));
    const fieldset = input.closest("fieldset");
    if (fieldset) fieldset.classList.remove("q-missing");
    return true;
  }

  // Likert: the focused scale, else the first one without an answer, else the last one.
  function likertTarget(form) {
    const scales = Array.from(form.querySelectorAll("fieldset.q-likert"));
    if (!scales.length) return null;
    const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("fieldset.q-likert");
    if (focused) return focused;
    return scales.find(function (s) { return !s.querySelector("input:checked"); }) || null;
  }

  function pickLikert(form, digit) {
    const scale = likertTarget(form);
    if (!scale) return false;
    const picked = check(scale.querySelector('input[type=radio][value="' + digit + '"]'));
    if (picked && document.activeElement && scale.contains(document.activeElement)) {
      const scales = Array.from(form.querySelectorAll("fieldset.q-likert"));
      const next = scales[scales.indexOf(scale) + 1];
      if (next) next.focus();
    }
    return picked;
  }

  function preference(form) { return form.querySelector("fieldset.q-preference"); }

  function pickChoice(form, value) {
    const pref = preference(form);
    return !!pref && check(pref.querySelector('input[value="' + value + '"][name$="-choice"]'));
  }

  function handlePairKey(form, event) {
    const pref = preference(form);
    if (!pref) return false;
    const choice = pref.querySelector('input[name$="-choice"]:checked');
    const winner = choice && (choice.value === "left" || choice.value === "right");
    const strength = pref.querySelector('input[name$="-strength"][value="' + event.key + '"]');
    if (winner && strength && !pref.querySelector('input[name$="-strength"]:checked')) return check(strength);
    if (event.key === "ArrowLeft" || event.key === "1") return pickChoice(form, "left");
    if (event.key === "ArrowRight" || event.key === "2") return pickChoice(form, "right");
    if (event.key === "t" || event.key === "T") return pickChoice(form, "tie");
    if (event.key === "b" || event.key === "B") return pickChoice(form, "both_bad");
    if (winner && strength) return check(strength);
    return false;
  }

  // Ranking: digits select the card at that rank, arrows or J/K move it.
  function renumber(list) {
    list.querySelectorAll(".rank-card").forEach(function (card, index) {
      const key = card.querySelector(".rank-key");
      if (key) key.textContent = String(index + 1);
    });
  }

  function select(card) {
    document.querySelectorAll(".rank-card.selected").forEach(function (c) { c.classList.remove("selected"); });
    selectedCard = card;
    if (card) { card.classList.add("selected"); card.focus({ preventScroll: false }); }
  }

  function move(card, direction) {
    if (!card) return false;
    const list = card.parentElement;
    if (direction === "up" && card.previousElementSibling) list.insertBefore(card, card.previousElementSibling);
    else if (direction === "down" && card.nextElementSibling) list.insertBefore(card.nextElementSibling, card);
    else return true;
    renumber(list);
    card.focus();
    return true;
  }

  function handleRankingKey(form, event) {
    const list = form.querySelector("ol.ranking");
    if (!list) return false;
    const cards = Array.from(list.querySelectorAll(".rank-card"));
    const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest(".rank-card");
    const current = focused || selectedCard;
    if (/^[1-9]$/.test(event.key) && Number(event.key) <= cards.length) {
      select(cards[Number(event.key) - 1]);
      return true;
    }
    if (event.key === "ArrowUp" || event.key === "k" || event.key === "K") return move(current, "up");
    if (event.key === "ArrowDown" || event.key === "j" || event.key === "J") return move(current, "down");
    return false;
  }

  function click(selector) {
    const button = document.querySelector(selector);
    if (!button) return false;
    // As for submitting: a key may come before htmx has settled the swapped-in buttons.
    if (window.htmx) window.htmx.process(button);
    button.click();
    return true;
  }

  function showDialog(id) {
    const dialog = document.getElementById(id);
    if (dialog && !dialog.open) dialog.showModal();
    return !!dialog;
  }

  function handleDialogKey(dialog, event) {
    if (dialog.id === "flag-dialog" && !isTyping(event.target)) {
      const reasons = dialog.querySelectorAll("input[name=reason]");
      if (/^[1-9]$/.test(event.key) && Number(event.key) <= reasons.length) {
        check(reasons[Number(event.key) - 1]);
        return true;
      }
      if (event.key === "Enter") return submitForm(dialog.querySelector("form"));
    }
    if (dialog.id === "flag-dialog" && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      return submitForm(dialog.querySelector("form"));
    }
    return false;
  }

  function submitForm(form) {
    const promptForm = document.getElementById("prompt-form");
    const target = form || promptForm;
    // A key pressed while htmx still settles the swapped-in form must not submit it natively.
    if (target && window.htmx) window.htmx.process(target);
    if (target) target.requestSubmit();
    return !!target;
  }

  document.addEventListener("keydown", function (event) {
    const dialog = openDialog();
    if (dialog) {
      if (handleDialogKey(dialog, event)) event.preventDefault();
      return;
    }
    const form = itemForm();
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      if (submitForm(form)) event.preventDefault();
      return;
    }
    if (isTyping(event.target) || event.altKey || event.ctrlKey || event.metaKey) return;
    let handled = false;
    if (event.key === "?") handled = showDialog("shortcuts");
    else if (event.key === "g" || event.key === "G") handled = toggleGuidelines();
    else if (event.key === "u" || event.key === "U") handled = click("[data-action=undo]");
    else if (form) {
      if (event.key === "Enter") handled = !event.target.closest("button, a, summary") && submitForm(form);
      else if (event.key === "s" || event.key === "S") handled = click("#item-form [data-action=skip]");
      else if (event.key === "f" || event.key === "F") handled = showDialog("flag-dialog");
      else if (event.key === "e" || event.key === "E") handled = editText(form);
      else {
        handled = handleRankingKey(form, event) || handlePairKey(form, event);
        if (!handled && /^[0-9]$/.test(event.key)) handled = pickLikert(form, event.key);
      }
    }
    if (handled) event.preventDefault();
  });

  // E: into the first text box (the rewrite, else the rationale), caret at the end.
  function editText(form) {
    const box = form.querySelector("textarea");
    if (!box) return false;
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
    return true;
  }

  function toggleGuidelines() {
    const panel = document.getElementById("guidelines");
    if (!panel) return false;
    panel.hidden = !panel.hidden;
    document.querySelectorAll("[data-action=guidelines]").forEach(function (b) {
      b.setAttribute("aria-expanded", String(!panel.hidden));
    });
    document.getElementById("workspace").classList.toggle("with-guidelines", !panel.hidden);
    return true;
  }

  document.addEventListener("click", function (event) {
    const target = event.target.closest ? event.target.closest("button") : null;
    if (!target) return;
    const action = target.dataset.action;
    if (action === "guidelines") toggleGuidelines();
    else if (action === "help") showDialog("shortcuts");
    else if (action === "flag") showDialog("flag-dialog");
    else if (action === "close-dialog") { const d = target.closest("dialog"); if (d) d.close(); }
    else if (target.dataset.move) move(target.closest(".rank-card"), target.dataset.move);
    else if (target.hasAttribute("data-expand")) {
      const text = target.closest(".rank-card").querySelector(".response-text");
      text.classList.toggle("clamped");
    }
  });

  // Submitting the flag dialog closes it before htmx swaps in the next item.
  document.addEventListener("htmx:beforeRequest", function (event) {
    const dialog = event.detail.elt.closest && event.detail.elt.closest("dialog");
    if (dialog && dialog.open) dialog.close();
  });

  // Dragging a ranking card is optional; buttons and keys do the same.
  let dragged = null;
  document.addEventListener("dragstart", function (event) {
    dragged = event.target.closest && event.target.closest(".rank-card");
  });
  document.addEventListener("dragover", function (event) {
    const over = event.target.closest && event.target.closest(".rank-card");
    if (!dragged || !over || over === dragged || over.parentElement !== dragged.parentElement) return;
    event.preventDefault();
    const box = over.getBoundingClientRect();
    const after = event.clientY > box.top + box.height / 2;
    over.parentElement.insertBefore(dragged, after ? over.nextElementSibling : over);
    renumber(over.parentElement);
  });
  document.addEventListener("dragend", function () { dragged = null; });
})();
