//! The clap definitions of joining hosts: join tokens and the CA's rotation.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum JoinTokenCommand {
    /// A one-time token for one host to join as NAME (prints the command to run on it)
    #[command(after_help = "Example:\n  slipctl agent token create web-7 --label role=web --ttl 30m\n  \
                            # on web-7: slipd join https://ctl.example:8443 --token <id>.<secret> --ca-sha256 <pin>\n\n\
                            The token is used once, expires (30 min unless --ttl), and only its hash is kept.")]
    Create {
        /// The agent's name: its certificate will say it, whatever the host asks for
        name: String,
        /// Labels for host selectors, key=value (repeatable)
        #[arg(long = "label")]
        labels: Vec<String>,
        /// How long the token may be used (s, m, h or d; at most 7d)
        #[arg(long, default_value = "30m", value_parser = slipway_common::time::parse_duration)]
        ttl: std::time::Duration,
        /// Where the controller dials the agent [default: the address it joins from, at its port]
        #[arg(long)]
        addr: Option<String>,
        /// The agents' endpoint in the printed command [default: the running server's --join-url]
        #[arg(long)]
        url: Option<String>,
    },
    /// Join tokens: name, expiry, used or not
    #[command(after_help = "Example:\n  slipctl agent token list")]
    List,
    /// Withdraw a join token before it is used
    #[command(after_help = "Example:\n  slipctl agent token rm 3f2a9c0d1e4b")]
    Rm {
        /// The token's id (the part before the dot)
        id: String,
    },
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Rotate the CA: a new CA issues from now on while both are trusted; `--finish` once every
    /// agent renewed
    #[command(after_help = "Example:\n  slipctl ca rotate            # agents renew onto the new CA on their own\n  \
                            slipctl agent list           # CA column: new everywhere?\n  \
                            slipctl ca rotate --finish   # the controller moves over; the old CA is dropped")]
    Rotate {
        /// End the rotation: the controller takes a certificate of the new CA and the old CA
        /// is no longer trusted (refused while an agent is still on the old CA)
        #[arg(long)]
        finish: bool,
        /// With --finish: drop the old CA although some agents did not renew (they must join again)
        #[arg(long, requires = "finish")]
        force: bool,
    },
}
