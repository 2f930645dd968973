//! The core's side of the cluster boundary: what other nodes ask of this one
//! ([`LocalNode`]), delegated to the registry, the routing state and session replication.

use std::sync::Arc;

use super::Broker;
use crate::cluster::{BoxFuture, FreezeToken, LocalNode, SessionExport};
use crate::message::Message;
use crate::protocol::reason;
use crate::routing::retained_versions::Version;

impl LocalNode for Broker {
    fn deliver_forwarded(
        &self,
        msg: Arc<Message>,
        direct: bool,
        shared: &[(String, String)],
    ) -> Option<BoxFuture<'static, bool>> {
        let wait = self.deliver_from_peer(msg, direct, shared)?;
        Some(Box::pin(wait))
    }

    fn set_retained(&self, msg: Arc<Message>, version: Option<Version>) {
        let mut ops = Vec::new();
        let durable = self.store.is_some();
        let r = self.routing.retained();
        match version {
            Some(v) => {
                if !r.merge(&msg, v, durable, &mut ops) {
                    return;
                }
            }
            // from a node that predates versions: taken as set now, as it always was
            None => {
                r.set_local(&msg, durable, &mut ops);
            }
        }
        self.retained_gauges();
        self.write_nowait(ops);
    }

    fn export_session(
        &self,
        client_id: &str,
        clean_start: bool,
        token: &FreezeToken,
    ) -> Option<SessionExport> {
        self.registry
            .freeze_export(client_id, clean_start, token, reason::SESSION_TAKEN_OVER)
    }

    fn export_for_leave(&self, client_id: &str, token: &FreezeToken) -> Option<SessionExport> {
        self.registry
            .freeze_export(client_id, false, token, reason::SERVER_SHUTTING_DOWN)
    }

    fn export_for_drain(&self, client_id: &str, token: &FreezeToken) -> Option<SessionExport> {
        self.registry
            .freeze_export(client_id, false, token, reason::USE_ANOTHER_SERVER)
    }

    fn drain_candidates(&self) -> Vec<(Arc<str>, bool)> {
        self.registry.drain_candidates()
    }

    fn kick(&self, client_id: &str, code: u8) -> bool {
        self.registry.kick(client_id, code)
    }

    fn client_connections(&self) -> usize {
        self.registry.connections()
    }

    fn session_ids(&self) -> Vec<Arc<str>> {
        self.registry.persistent_ids()
    }

    fn holds(&self, client_ids: &[String], offline_only: bool) -> Vec<String> {
        self.registry.holds(client_ids, offline_only)
    }

    fn connected_ids(&self) -> Vec<String> {
        self.registry.connected_ids()
    }

    fn save_peer_routes(&self, node: &str, rec: Option<Vec<u8>>) {
        if let Some(store) = &self.store {
            store.save_peer_routes(node, rec);
        }
    }

    fn load_peer_routes(&self) -> Vec<(String, Vec<u8>)> {
        self.store
            .as_ref()
            .map(|s| s.load_peer_routes())
            .unwrap_or_default()
    }

    fn frozen_pending(&self) -> usize {
        self.registry.frozen_pending()
    }

    fn finish_all_moves(&self) -> Vec<(Arc<str>, FreezeToken, Vec<Vec<u8>>)> {
        self.registry.finish_all_moves()
    }

    fn settle_export(&self, client_id: &str, token: &FreezeToken, keep: bool) -> Vec<Vec<u8>> {
        self.registry.settle_export(client_id, token, keep)
    }

    fn finish_move(&self, client_id: &str, token: &FreezeToken) -> Vec<Vec<u8>> {
        self.registry.finish_move(client_id, token)
    }

    fn adopt_session(&self, client_id: &str, export: SessionExport) -> BoxFuture<'_, bool> {
        if let Some(r) = &self.replica {
            // the session itself came: a standby copy of it would only bring duplicates
            r.discard_standby(client_id);
        }
        let adopted = self.registry.adopt_session(client_id, export);
        Box::pin(async move {
            match (&self.store, adopted) {
                (Some(store), true) => store.write(Vec::new()).await.is_ok(),
                (_, a) => a,
            }
        })
    }

    fn append_session(&self, client_id: &str, queued: &[Vec<u8>]) {
        self.registry.append_handover(client_id, queued)
    }

    fn retained(&self) -> Vec<(Arc<Message>, Version)> {
        self.routing.retained().snapshot()
    }

    fn apply_replica(&self, from: &Arc<str>, ops: &[u8]) -> BoxFuture<'static, bool> {
        match &self.replica {
            Some(r) => r.apply(from, ops),
            None => Box::pin(std::future::ready(false)),
        }
    }

    fn members(&self, up: &[Arc<str>]) {
        if let Some(r) = &self.replica {
            r.members(up);
        }
    }

    fn holder_down(&self, n: &Arc<str>) {
        if let Some(r) = &self.replica {
            r.holder_down(n);
        }
    }

    fn replica_link(&self, n: &Arc<str>) {
        if let Some(r) = &self.replica {
            r.link(n);
        }
    }

    fn holder_up(&self, n: &Arc<str>, restarted: bool) {
        if let Some(r) = &self.replica {
            r.holder_up(n, restarted);
        }
    }

    fn defer_restored(&self, client_id: &str) -> bool {
        if !self
            .replica
            .as_ref()
            .is_some_and(|r| r.defers_to_peer(client_id))
        {
            return false;
        }
        match self.registry.get(client_id) {
            Some(s) if s.lock().conn.is_none() => {
                self.registry.remove_session(&s);
                true
            }
            _ => false,
        }
    }
}
