use std::process::ExitCode;

fn main() -> ExitCode {
    netmigrate::cli::main()
}
