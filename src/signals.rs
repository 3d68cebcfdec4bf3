//! SIGINT/SIGTERM (and SIGHUP, a closed terminal): the first asks the run to stop cleanly, a second exits at once (killing
//! the model children's process groups first: they run in groups of their own, so no
//! terminal or `kill` of mqdemo reaches them).

use color_eyre::eyre::{Result, WrapErr};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Install the handlers; the flag turns true on the first signal.
pub(crate) fn install() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).wrap_err("cannot install signal handlers")?;
    let flag = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("mqdemo-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if flag.swap(true, Ordering::SeqCst) {
                    crate::child::kill_all();
                    std::process::exit(130);
                }
            }
        })
        .wrap_err("cannot install signal handlers")?;
    Ok(stop)
}
