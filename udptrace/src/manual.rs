//! The manual page and shell completions, generated from the clap definition (`cli.rs`) so
//! that they cannot drift from the options the binary accepts.

use clap::CommandFactory as _;

use crate::cli::{Cli, CompletionShell};

/// The completion script for `shell`.
pub fn completions(shell: CompletionShell) -> String {
    let generator = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut Cli::command(), "udptrace", &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

/// `udptrace(8)` in roff: the options and subcommands, with the README's facts about what it
/// needs to run.
pub fn man_page() -> String {
    let command = Cli::command();
    let manual = clap_mangen::Man::new(command)
        .section("8")
        .manual("System Administration");
    let mut page = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = manual.render(&mut page);
    String::from_utf8_lossy(&page).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_know_the_subcommands_and_options() {
        for shell in [
            CompletionShell::Bash,
            CompletionShell::Zsh,
            CompletionShell::Fish,
        ] {
            let script = completions(shell);
            // fish declares long options as `-l NAME`.
            let long = |name: &str| match shell {
                CompletionShell::Fish => format!("-l {name}"),
                CompletionShell::Bash | CompletionShell::Zsh => format!("--{name}"),
            };
            let options = ["json", "max-flows", "netns"].map(long);
            for word in ["doctor", "lab", "completions"]
                .into_iter()
                .chain(options.iter().map(String::as_str))
            {
                assert!(script.contains(word), "{shell:?} lacks {word}");
            }
            assert!(
                !script.contains("lab-guard"),
                "{shell:?} offers the internal command"
            );
        }
    }

    #[test]
    fn the_manual_page_is_roff_with_every_option() {
        let page = man_page();
        assert!(page.starts_with(".ie"), "{}", &page[..page.len().min(80)]);
        assert!(page.contains(".TH udptrace 8"), "{page}");
        for option in ["\\-\\-json", "\\-\\-max\\-flows", "\\-\\-count", "doctor"] {
            assert!(page.contains(option), "no {option} in the page");
        }
    }
}
