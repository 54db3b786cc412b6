// A read-only field marked data-select-on-click (a set-password link, a new API token) selects
// its whole value when clicked, ready to copy. A static file, not an onclick attribute: the
// Content-Security-Policy runs no inline script. Delegated, so fields that htmx swaps in work too.
document.addEventListener("click", (event) => {
  const field = event.target.closest("input[data-select-on-click]");
  if (field) {
    field.select();
  }
});
