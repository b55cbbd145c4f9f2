// llmtap UI: the few things plain HTML cannot do. The pages work without it.
"use strict";

// a click anywhere on a trace-list row opens the trace (links inside keep their own target)
document.addEventListener("click", (event) => {
  const row = event.target.closest("tr.row-link");
  if (!row || event.target.closest("a, button, input, select")) return;
  if (window.getSelection().toString()) return; // the user is selecting text, not navigating
  window.location.href = row.dataset.href;
});

// blank filter fields stay out of the address, so links stay short and shareable
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!form.classList.contains("filters")) return;
  for (const field of form.querySelectorAll("input[name], select[name]")) {
    if (field.value === "") field.disabled = true;
  }
});

// coming back to the page from history must not leave those fields disabled
window.addEventListener("pageshow", () => {
  for (const field of document.querySelectorAll(".filters [disabled]")) field.disabled = false;
});
