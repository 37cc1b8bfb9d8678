//! Documentation generated from the command-line definition itself, so it never drifts from the
//! binary: man pages (clap_mangen) and shell completions (clap_complete). `scripts/package.sh`
//! puts both in the Debian package.

use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `parapet man`.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Directory to write `parapet.1` and `parapet-<command>.1` into (created).
    #[arg(long)]
    pub dir: PathBuf,
}

/// Arguments of `parapet completions`.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Writes a man page for `cmd` and one for each of its subcommands, recursively.
pub fn man(cmd: clap::Command, args: ManArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let mut n = 0;
    write_pages(&cmd, "parapet", &args.dir, &mut n)?;
    crate::outln!("wrote {n} man pages to {}", args.dir.display())?;
    Ok(ExitCode::SUCCESS)
}

fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &std::path::Path,
    n: &mut usize,
) -> anyhow::Result<()> {
    let mut out = Vec::new();
    let shown = cmd
        .clone()
        .display_name(name.to_string())
        .bin_name(name.replace('-', " "));
    clap_mangen::Man::new(shown)
        .title(name.to_ascii_uppercase())
        .render(&mut out)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    *n += 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_name = format!("{name}-{}", sub.get_name());
        write_pages(sub, &sub_name, dir, n)?;
    }
    Ok(())
}

/// Prints the completion script of `shell` for `cmd`.
pub fn completions(mut cmd: clap::Command, args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "parapet", &mut out);
    crate::cli::out::write_all(&out)?;
    Ok(ExitCode::SUCCESS)
}
