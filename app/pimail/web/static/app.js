// pimail: the little script every page loads (pages work without it).
"use strict";

// A page restored from the back/forward cache shows what was true when it was
// left: after a logout, the mailbox. Ask the server again instead.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) {
    window.location.reload();
  }
});
