pub fn run(
    _g: &crate::config::Global,
    _s: &std::sync::atomic::AtomicBool,
) -> color_eyre::eyre::Result<std::process::ExitCode> {
    todo!()
}
