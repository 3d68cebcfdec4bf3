//! SIGINT/SIGTERM: the first asks the run to stop cleanly, a second exits at once.

use color_eyre::eyre::{Result, WrapErr};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Install the handlers; the flag turns true on the first signal.
pub fn install() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the conditional exit sees the flag as it was before this signal.
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))
            .wrap_err("cannot install signal handlers")?;
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .wrap_err("cannot install signal handlers")?;
    }
    Ok(stop)
}
