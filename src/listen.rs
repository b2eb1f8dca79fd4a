//! Listening sockets. The default addresses are `[::]:port`: one socket that takes IPv6 and,
//! as IPv4-mapped addresses, IPv4, so that the injector answers on single-stack clusters of
//! either family and on dual-stack ones without configuration.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// What tokio's own `TcpListener::bind` uses.
const BACKLOG: i32 = 1024;

/// Binds `addr` for accepting. An IPv6 address is bound with `IPV6_V6ONLY` off, whatever
/// the host's `net.ipv6.bindv6only` default, so `[::]` takes both families. On a host
/// without IPv6 (booted with `ipv6.disable=1`), `[::]` falls back to `0.0.0.0` with a
/// warning instead of failing. Must be called within a tokio runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    match bind_socket(addr) {
        Err(error) if is_unspecified_v6(addr) && ipv6_unavailable(&error) => {
            let fallback = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::warn!(
                %addr, %fallback, %error,
                "IPv6 is not available on this host; listening on IPv4 only"
            );
            bind_socket(fallback)
        }
        other => other,
    }
}

fn bind_socket(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // As std and tokio do: a restarted injector rebinds while old connections linger.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

fn is_unspecified_v6(addr: SocketAddr) -> bool {
    addr.is_ipv6() && addr.ip().is_unspecified()
}

/// EAFNOSUPPORT (no IPv6 in the kernel) or EADDRNOTAVAIL (IPv6 off on every interface).
fn ipv6_unavailable(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(97 | 99)) || error.kind() == io::ErrorKind::AddrNotAvailable
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn round_trip(listener: &TcpListener, to: SocketAddr) -> SocketAddr {
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(to), listener.accept());
        let mut client = client.expect("connects");
        let (mut server, peer) = accepted.expect("accepts");
        client.write_all(b"ping").await.expect("writes");
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.expect("reads");
        assert_eq!(&buf, b"ping");
        peer
    }

    #[tokio::test]
    async fn the_unspecified_ipv6_address_takes_both_families() {
        let listener = bind("[::]:0".parse().expect("address")).expect("binds [::]");
        let port = listener.local_addr().expect("bound").port();
        let v6 = round_trip(
            &listener,
            SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port)),
        )
        .await;
        assert_eq!(v6.ip().to_string(), "::1");
        let v4 = round_trip(&listener, SocketAddr::from(([127, 0, 0, 1], port))).await;
        // An IPv4 client of a dual-stack socket shows as an IPv4-mapped IPv6 address.
        assert_eq!(v4.ip().to_string(), "::ffff:127.0.0.1");
    }

    #[tokio::test]
    async fn a_specific_address_takes_only_its_own() {
        let listener = bind("127.0.0.1:0".parse().expect("address")).expect("binds");
        let port = listener.local_addr().expect("bound").port();
        round_trip(&listener, SocketAddr::from(([127, 0, 0, 1], port))).await;
        let v6 =
            tokio::net::TcpStream::connect(SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port)))
                .await;
        assert!(v6.is_err(), "::1 is not 127.0.0.1");
    }
}
