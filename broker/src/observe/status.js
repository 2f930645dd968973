// The broker status page's refresh: render(GET /api/status) -> the body's HTML (the same
// markup as status.rs renders on the server).
function render(s) {
  const f = s.figures, n = k => f[k] ?? 0;
  const store = !s.persistent ? "memory only (no data_dir)"
    : s.store_failing ? `<span class="failed">${esc(s.store_failing)}</span>`
    : `<span class="ok">ok</span>`;
  let o = `<p>node <b>${esc(s.name)}</b> · store ${store}</p><h2>Clients and sessions</h2>` +
    `<table id="figures"><tr><th>connected clients</th><td>${n("clients_connected")}</td></tr>` +
    `<tr><th>connecting</th><td>${n("connections_pending")}</td></tr>` +
    `<tr><th>sessions</th><td>${n("sessions")}</td></tr>` +
    `<tr><th>subscriptions</th><td>${n("subscriptions")}</td></tr>` +
    `<tr><th>session timers</th><td>${n("session_timers")}</td></tr>` +
    `<tr><th>messages in / out</th><td>${n("messages_received_total")} / ${n("messages_sent_total")}</td></tr>` +
    `<tr><th>retained messages (tombstones)</th><td>${n("retained_messages")} (${n("retained_tombstones")})</td></tr>` +
    `<tr><th>store commits / bytes written / failed commits</th><td>${n("store_commits")} / ` +
    `${n("store_bytes_written")} / ${n("store_commit_failures_total")}</td></tr></table>`;
  o += `<h2>Dropped messages by reason</h2><table id="dropped"><tr><th>reason</th><th>messages</th></tr>`;
  for (const [k, v] of Object.entries(s.dropped)) o += `<tr><td>${esc(k)}</td><td>${v}</td></tr>`;
  o += `</table><h2>Cluster</h2><table id="nodes"><tr><th>node</th><th>state</th><th>routes</th><th>routes held</th></tr>`;
  for (const node of s.cluster.nodes) {
    const st = esc(node.state), name = esc(node.name);
    const held = node.routes_held === undefined ? "" : (node.routes_held ? "yes" : "no");
    const link = node.admin ? `<a href="http://${esc(node.admin)}/">${name}</a>` : name;
    o += `<tr data-node="${name}"><td>${link}</td><td class="${st}">${st}</td>` +
      `<td>${node.routes}</td><td>${held}</td></tr>`;
  }
  o += `</table>`;
  const r = s.cluster.replication;
  if (r) o += `<p id="replication">session replicas ${r.session_replicas} · synced ${r.synced} · ` +
    `waiting to be copied ${r.sync_pending} · standby copies of peers' sessions ${r.standby_sessions}</p>`;
  return o;
}
