// harness view: progressive enhancement only (every page works without scripts).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // grid filters: apply on change
  const filters = document.getElementById("filters");
  if (filters) {
    filters.querySelectorAll("select").forEach((s) => s.addEventListener("change", () => filters.submit()));
  }
  // a cell's samples: filter the rows as you type (the server filters too, for links and no-script use)
  const form = document.getElementById("sample-filter");
  const table = document.getElementById("samples");
  if (form && table) {
    const search = form.querySelector("input[name=q]");
    const status = form.querySelector("select[name=status]");
    const shown = document.getElementById("shown");
    status.addEventListener("change", () => form.submit());
    search.addEventListener("input", () => {
      const needle = search.value.trim().toLowerCase();
      let n = 0;
      table.querySelectorAll("tbody tr").forEach((tr) => {
        const hit = !needle || tr.textContent.toLowerCase().includes(needle);
        tr.hidden = !hit;
        n += hit ? 1 : 0;
      });
      if (shown) shown.textContent = n + " shown";
    });
  }
});
