//! A short tour of segq: open a queue, append a record and a batch, flush, read by offset,
//! iterate, close, reopen, and check that the records and their offsets are still there.
//!
//! ```text
//! cargo run --example demo            # uses a temporary directory, removed at the end
//! cargo run --example demo -- DIR     # keeps the queue in DIR (created if missing)
//! ```
//!
//! Run it twice on the same DIR to see offsets carry on from where the last run stopped.

use std::error::Error;
use std::path::PathBuf;

use segq::{Options, Queue, SyncPolicy};

fn main() -> Result<(), Box<dyn Error>> {
    // Keep the temporary directory alive until the end of `main`; it is deleted on drop.
    let mut temp_dir = None;
    let dir = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => temp_dir.insert(tempfile::tempdir()?).path().to_path_buf(),
    };

    // `Never` leaves syncing to us, so the demo can show what `flush` does. The default,
    // `SyncPolicy::Always`, would make every append durable before it returns.
    let options = Options::default().segment_bytes(1 << 20).sync(SyncPolicy::Never);

    let queue = Queue::open(&dir, options.clone())?;
    println!("opened a queue in {} (next offset {})", dir.display(), queue.next_offset());

    let single = queue.append(b"apple")?;
    let batch = queue.append_batch(&[b"banana".as_slice(), b"cherry", b"damson"])?;
    println!(
        "appended one record at offset {single} and a batch of {} at offsets {}..{}",
        batch.end - batch.start,
        batch.start,
        batch.end
    );

    println!("before flush: offsets below {} are durable", queue.durable_offset());
    queue.flush()?;
    println!("after flush:  offsets below {} are durable", queue.durable_offset());

    let middle = batch.start + 1;
    let record = queue.read(middle)?.expect("the offset was just appended");
    println!("read offset {}: {:?}", record.offset(), String::from_utf8_lossy(record.payload()));

    let mut listed = Vec::new();
    for record in queue.iter_from(single) {
        let record = record?;
        listed.push(format!("{}={}", record.offset(), String::from_utf8_lossy(record.payload())));
    }
    println!("iterated from offset {single}: {}", listed.join(", "));

    let next = queue.next_offset();
    queue.close()?;
    drop(queue);

    let queue = Queue::open(&dir, options)?;
    let recovery = queue.recovery();
    println!(
        "reopened: clean shutdown = {}, bytes scanned = {}, next offset = {}",
        recovery.clean,
        recovery.scanned_bytes,
        queue.next_offset()
    );
    assert!(recovery.clean, "a closed queue reopens without recovery");
    assert_eq!(queue.next_offset(), next, "offsets persist across a reopen");

    let first = queue.read(single)?.expect("records persist across a reopen");
    println!("offset {single} still reads {:?}", String::from_utf8_lossy(first.payload()));
    queue.close()?;
    Ok(())
}
