//! Loopback ports for servers a test starts later or restarts on the same address.

use std::net::TcpListener;

/// A port on 127.0.0.1 that nothing listens on (bound, read and released). Prefer binding
/// `127.0.0.1:0` in the server itself; this is for addresses that must be known before the
/// server starts (a webhook URL registered first, a restart on the same port).
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` distinct such ports: all are bound at once before any is released.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local_addr").port())
}
