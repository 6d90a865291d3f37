//! Cancel requests arrive on a new connection carrying the key the client got in
//! BackendKeyData. Clients get keys we generate; this registry maps them to the server's real
//! key, so a client can only cancel its own sessions and never learns the server's key.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

/// (process id, secret key) as in BackendKeyData.
pub type Key = (i32, i32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub key: Key,
}

#[derive(Default, Clone)]
pub struct Registry {
    map: Arc<Mutex<HashMap<Key, Upstream>>>,
}

/// Removes the mapping when the session ends.
pub struct Registration {
    map: Arc<Mutex<HashMap<Key, Upstream>>>,
    key: Key,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl Registry {
    pub fn register(&self, client: Key, server: Key, addr: SocketAddr) -> Registration {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client, Upstream { addr, key: server });
        Registration {
            map: self.map.clone(),
            key: client,
        }
    }

    pub fn lookup(&self, client: Key) -> Option<Upstream> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&client)
            .copied()
    }
}

/// A fresh random key for a client. The pid half is kept positive, as real pids are.
pub fn new_client_key() -> Key {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let pid = i32::from_be_bytes([bytes[0] & 0x7f, bytes[1], bytes[2], bytes[3]]);
    let key = i32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    (pid.max(1), key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_while_registered() {
        let registry = Registry::default();
        let addr = "127.0.0.1:5432".parse().unwrap();
        let client = new_client_key();
        assert!(client.0 > 0);
        let registration = registry.register(client, (42, 7), addr);
        assert_eq!(
            registry.lookup(client),
            Some(Upstream { addr, key: (42, 7) })
        );
        assert_eq!(registry.lookup((client.0, client.1.wrapping_add(1))), None);
        drop(registration);
        assert_eq!(registry.lookup(client), None);
    }
}
