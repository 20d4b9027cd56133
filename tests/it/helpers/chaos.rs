//! A TCP proxy on loopback that can cut its traffic, to simulate a Redis or Postgres outage.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{net::TcpListener, sync::watch};

pub struct Chaos {
    pub addr: SocketAddr,
    broken: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
}

impl Chaos {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let broken = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let (b, g) = (broken.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if b.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = g.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {},
                        _ = cut.changed() => {},
                    }
                });
            }
        });
        Self {
            addr,
            broken,
            generation,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn break_networking(&self) {
        self.broken.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.broken.store(false, Ordering::SeqCst);
    }
}
