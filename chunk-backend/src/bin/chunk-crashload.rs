//! chunk-crashload: appends to one LogBlob from several threads and prints every acknowledged
//! record, so a test can `kill -9` it and check what survived.
//!
//! `chunk-crashload STORE THREADS BASE` prints `ack VERSION THREAD I` after each durable
//! append; thread numbers start at BASE, so every run writes records of its own.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use chunk_backend::blob::LogStore;
use chunk_backend::crashload::{config, payload};
use chunk_backend::disk::Disk;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: chunk-crashload STORE THREADS BASE".into());
    }
    let threads: u64 = args[2].parse()?;
    let base: u64 = args[3].parse()?;
    let disk = Arc::new(Disk::open(std::path::Path::new(&args[1]), config())?);
    let store = Arc::new(LogStore::open(disk)?);
    if !store.blobs().contains(&1) {
        store.create(1)?;
    }
    let lease = store.lease(1, "crashload", Duration::from_secs(3600))?;
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let handles: Vec<_> = (base..base + threads)
        .map(|t| {
            let (store, lease, out) = (store.clone(), lease.clone(), out.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    match store.append(&lease, &payload(t, i)) {
                        Ok((_, v)) => {
                            if let Ok(mut o) = out.lock() {
                                let _ = writeln!(o, "ack {v} {t} {i}");
                                let _ = o.flush();
                            }
                        }
                        Err(e) => {
                            eprintln!("append failed: {e}");
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}
