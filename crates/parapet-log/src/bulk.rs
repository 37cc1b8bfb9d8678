//! Bulk loading: append every line of a reader as one entry, in large batches, with the reading
//! and leaf hashing of one batch overlapping the writing of the previous one.

use crate::error::LogError;
use crate::{Batch, BatchTicket, Log};
use std::collections::VecDeque;
use std::io::Read;
use std::ops::Range;

/// Entries per batch submitted by [`append_lines`].
pub const LINES_PER_BATCH: usize = 1 << 15;

/// Result of [`append_lines`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendSummary {
    /// Indices of the appended entries.
    pub indices: Range<u64>,
}

fn wait_oldest(
    inflight: &mut VecDeque<BatchTicket>,
    first: &mut Option<u64>,
    last: &mut u64,
    progress: &mut dyn FnMut(u64),
    durable: &mut u64,
) -> Result<(), LogError> {
    if let Some(t) = inflight.pop_front() {
        let r = t.wait()?;
        first.get_or_insert(r.start);
        *last = r.end;
        *durable += r.end - r.start;
        progress(*durable);
    }
    Ok(())
}

/// Appends each line of `input` (without its `\n`) as one entry and waits until all are durable.
/// A final line without a newline counts. `progress` gets the number of durable entries so far.
/// A line over 65535 bytes stops the load: the lines before it are appended durably, none after.
/// Call from a plain thread (it blocks), not from async code.
pub fn append_lines(
    log: &Log,
    mut input: impl Read,
    mut progress: impl FnMut(u64),
) -> Result<AppendSummary, LogError> {
    const READ: usize = 4 << 20;
    let mut buf: Vec<u8> = vec![0; READ];
    let mut filled = 0usize;
    let mut eof = false;
    let mut inflight: VecDeque<BatchTicket> = VecDeque::new();
    let mut first = None;
    let mut last = log.size();
    let mut durable = 0u64;
    let mut line_no = 0u64;
    let mut batch = Batch::new();
    let mut failure: Option<LogError> = None;
    'outer: loop {
        if !eof {
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let n = loop {
                match input.read(&mut buf[filled..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        failure = Some(LogError::io("reading standard input", e));
                        break 'outer;
                    }
                }
            };
            eof = n == 0;
            filled += n;
        }
        let mut pos = 0usize;
        loop {
            let line = match memchr::memchr(b'\n', &buf[pos..filled]) {
                Some(off) => {
                    let l = pos..pos + off;
                    pos += off + 1;
                    l
                }
                None if eof && pos < filled => {
                    let l = pos..filled;
                    pos = filled;
                    l
                }
                None => break,
            };
            line_no += 1;
            if let Err(e) = batch.push(&buf[line]) {
                failure = Some(LogError::malformed(
                    format!("input line {line_no}"),
                    format!("{e}; the lines before it are appended, none after it"),
                ));
                break 'outer;
            }
            if batch.len() >= LINES_PER_BATCH {
                if inflight.len() >= 2 {
                    wait_oldest(
                        &mut inflight,
                        &mut first,
                        &mut last,
                        &mut progress,
                        &mut durable,
                    )?;
                }
                inflight.push_back(log.submit_batch(std::mem::take(&mut batch)));
            }
        }
        if filled - pos > crate::tile::MAX_ENTRY_SIZE + 1 {
            failure = Some(LogError::malformed(
                format!("input line {}", line_no + 1),
                format!("{}", LogError::EntryTooLarge { len: filled - pos })
                    + "; the lines before it are appended, none after it",
            ));
            break;
        }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
        if eof {
            break;
        }
    }
    if !batch.is_empty() {
        inflight.push_back(log.submit_batch(batch));
    }
    while !inflight.is_empty() {
        wait_oldest(
            &mut inflight,
            &mut first,
            &mut last,
            &mut progress,
            &mut durable,
        )?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(AppendSummary {
        indices: first.unwrap_or(last)..last,
    })
}
