"use strict";
document.getElementById("login").addEventListener("submit", async ev => {
  ev.preventDefault();
  const msg = document.getElementById("msg");
  msg.textContent = "";
  try {
    await tg.post("/login", {token: document.getElementById("token").value});
    const next = new URLSearchParams(location.search).get("next") || "/dashboard";
    location.href = next.startsWith("/") && !next.startsWith("//") ? next : "/dashboard";
  } catch (e) { msg.textContent = e.message; }
});
