//! Progress display on stderr, kept off when stderr is not a terminal so logs stay clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `len` requests, or a counter when the level runs for a time instead.
pub fn bar(len: Option<u64>, label: String) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = match len {
        Some(n) => ProgressBar::with_draw_target(Some(n), target).with_style(
            ProgressStyle::with_template("{prefix:>24} [{bar:32}] {pos}/{len} requests {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        ),
        None => {
            let bar = ProgressBar::with_draw_target(None, target).with_style(
                ProgressStyle::with_template("{prefix:>24} {spinner} {pos} requests {elapsed}")
                    .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        }
    };
    bar.with_prefix(label)
}
