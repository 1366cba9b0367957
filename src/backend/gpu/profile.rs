//! `FORGE_PROFILE=1`: time every kernel launch (synchronizing its stream
//! before and after, so each time includes one launch's overhead) and sum
//! per kernel name; `report()` prints the table. Decode graphs are off while
//! profiling. For finding where time goes, not for benchmark numbers.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use parking_lot::Mutex;

use super::runtime::{GpuRuntime, Stream};
use crate::error::Result;

static TABLE: Mutex<Option<HashMap<String, (u64, f64)>>> = Mutex::new(None);

pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| crate::env_flag("FORGE_PROFILE"))
}

pub struct Timer(Option<Instant>);

pub fn start(rt: &dyn GpuRuntime, s: Stream) -> Result<Timer> {
    if !enabled() {
        return Ok(Timer(None));
    }
    rt.stream_sync(s)?;
    Ok(Timer(Some(Instant::now())))
}

pub fn stop(t: Timer, rt: &dyn GpuRuntime, s: Stream, name: &str) -> Result<()> {
    if let Some(t0) = t.0 {
        rt.stream_sync(s)?;
        let dt = t0.elapsed().as_secs_f64();
        let mut g = TABLE.lock();
        let e = g.get_or_insert_with(HashMap::new).entry(name.to_string()).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += dt;
    }
    Ok(())
}

/// The table so far (kernel, calls, total ms, µs per call), largest first; clears it.
pub fn report() -> String {
    let mut rows: Vec<(String, (u64, f64))> = TABLE.lock().take().unwrap_or_default().into_iter().collect();
    rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    let total: f64 = rows.iter().map(|r| r.1 .1).sum();
    let mut out = format!("{:24} {:>8} {:>10} {:>10} {:>6}\n", "kernel", "calls", "total ms", "us/call", "share");
    for (name, (n, t)) in rows {
        out += &format!("{name:24} {n:>8} {:>10.2} {:>10.1} {:>5.1}%\n", t * 1e3, t * 1e6 / n as f64, 100.0 * t / total);
    }
    out
}
