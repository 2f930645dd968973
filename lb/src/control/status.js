// The LB status page's refresh: render(GET /api/status) -> the body's HTML (the same markup
// as status.rs renders on the server).
function render(s) {
  let o = `<p>LB <b>${esc(s.name)}</b> · config generation <b>${s.generation}</b> · ` +
    (s.accepting ? "accepting" : `<span class="down">shutting down</span>`) + `</p>`;
  if (s.last_error) o += `<p class="err">last reload refused: ${esc(s.last_error)}</p>`;
  o += `<h2>Backends</h2><table id="backends"><tr><th>name</th><th>address</th><th>state</th>` +
    `<th>weight</th><th>open</th><th>total</th><th>bytes in / out</th>` +
    `<th>health checks (newest right)</th><th>last error</th></tr>`;
  for (const b of s.backends) {
    let hist = "", lastErr = "";
    for (const c of b.checks) {
      hist += `<span class="${c.error === null ? "ok" : "failed"}" title="${c.ms} ms"></span>`;
      lastErr = c.error === null ? "" : esc(c.error);
    }
    const n = esc(b.name), st = esc(b.state);
    o += `<tr data-backend="${n}"><td>${n}</td><td>${esc(b.addr)}</td><td class="${st}">${st}</td>` +
      `<td>${b.weight}</td><td>${b.active_connections}</td><td>${b.total_connections}</td>` +
      `<td>${b.bytes_in} / ${b.bytes_out}</td><td class="hist">${hist}</td>` +
      `<td class="err">${lastErr}</td></tr>`;
  }
  o += `</table><h2>Listeners</h2><table id="listeners"><tr><th>name</th><th>accepted</th>` +
    `<th>open</th><th>bytes in / out</th><th>rejected by reason</th></tr>`;
  for (const l of s.listeners) {
    const rej = Object.entries(l.rejected).map(([k, v]) => `${esc(k)} ${v}`).join(" · ");
    o += `<tr><td>${esc(l.name)}</td><td>${l.accepted}</td><td>${l.active}</td>` +
      `<td>${l.bytes_in} / ${l.bytes_out}</td><td>${rej}</td></tr>`;
  }
  return o + `</table>`;
}
