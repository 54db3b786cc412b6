// Admin pages: a form answered with 422 (its errors) is swapped in like a success, so the
// admin sees the messages where they typed.
document.addEventListener("htmx:beforeSwap", (event) => {
  if (event.detail.xhr.status === 422) {
    event.detail.shouldSwap = true;
    event.detail.isError = false;
  }
});
