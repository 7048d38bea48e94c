//! The exit statuses both command lines use (design: `lora-convert` 0 written / 2 refused or bad input;
//! `lora-validate` 0 pass / 1 gate failed / 2 bad input / 3 llama.cpp could not load or decode, or failed part-way /
//! 130 interrupted; both of the last two write the report of what finished, marked partial).

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    /// The adapter was written, or the validation passed.
    Success = 0,
    /// The validation gate failed.
    GateFailed = 1,
    /// Bad input or usage, or a refusal: nothing was written.
    BadInput = 2,
    /// llama.cpp could not load or decode (a run it stopped part-way reports what finished).
    Runtime = 3,
    /// Interrupted by Ctrl-C (SIGINT) after the report of what finished was written: 128 + SIGINT.
    Interrupted = 130,
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(s: ExitStatus) -> Self {
        std::process::ExitCode::from(s as u8)
    }
}
