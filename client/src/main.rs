//! `veil`: run a local Veil server, mint tokens, join a call.
//!
//! ```text
//! veil server                                   # key service + SFU, embedded SQLite; prints a token
//! veil join --room demo --token <token>         # join, publish synthetic media, show a status line
//! veil join ... --video in.ivf --audio in.ogg   # publish VP8 and Opus files (looped)
//! veil join ... --save DIR                      # save others' media: DIR/<participant>.ivf/.ogg
//! veil token --room demo --identity bob         # another participant's token
//! ```
#![forbid(unsafe_code)]

mod demo;
mod join;
mod route;
mod save;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use clap::{Parser, Subcommand};
use veil_auth::{Claims, Grants};

#[derive(Debug, Parser)]
#[command(
    name = "veil",
    version,
    about = "Veil: end-to-end encrypted group calls"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the Veil server locally: key service and blind SFU, embedded SQLite and token key.
    Server(ServerArgs),
    /// Mint an access token with the local server's key.
    Token(TokenArgs),
    /// Join a room with media: publish files or a synthetic source, optionally save what the
    /// others publish, and show a live status line.
    Join(JoinArgs),
    /// A whole encrypted call on this machine: server, SFU and participants on loopback.
    Demo(DemoArgs),
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Participants at the start (one more joins a third of the way in).
    #[arg(long, default_value_t = 3)]
    participants: usize,
    /// Length of the call in seconds (default 10; with --browser, until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// A call to join from a browser instead: the server with its page, and a native
    /// participant publishing real VP8 and Opus; prints the links to open.
    #[arg(long)]
    browser: bool,
    /// With --browser: the web listener's address.
    #[arg(long, default_value = "127.0.0.1:7480", requires = "browser")]
    web_listen: std::net::SocketAddr,
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Directory for the database and the token key.
    #[arg(long, env = "VEIL_DATA_DIR", default_value = "./veil-data")]
    data_dir: PathBuf,
    /// gRPC listen address.
    #[arg(long, env = "VEIL_LISTEN", default_value = "127.0.0.1:7443")]
    listen: std::net::SocketAddr,
    /// Web listen address: the browser page and gRPC-Web (`off` for none).
    #[arg(long, env = "VEIL_WEB_LISTEN", default_value = "127.0.0.1:7480", value_parser = parse_web_listen)]
    web_listen: WebListen,
    /// Room to print a join token for.
    #[arg(long, default_value = "demo")]
    room: String,
    /// Allow the gRPC and web listeners without TLS on addresses other than loopback (access
    /// tokens then cross that network in plaintext). For TLS, run `veil-server serve
    /// --tls-cert --tls-key`.
    #[arg(long, env = "VEIL_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// Data directory of the local server (its token key signs).
    #[arg(long, env = "VEIL_DATA_DIR", default_value = "./veil-data")]
    data_dir: PathBuf,
    /// Room.
    #[arg(long)]
    room: String,
    /// Participant identity.
    #[arg(long)]
    identity: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    ttl: u64,
}

#[derive(Debug, clap::Args)]
struct JoinArgs {
    /// Server URL (key service and SFU): `https://` for a server with TLS; `http://` only to
    /// loopback unless --insecure-plaintext. Replicas of the key service: their URLs
    /// separated by commas; the client fails over between them, and uses the first one's SFU.
    #[arg(long, env = "VEIL_URL", default_value = "http://127.0.0.1:7443")]
    url: String,
    /// PEM certificate of the CA that issued the server's TLS certificate (a private
    /// deployment); default: the system's roots.
    #[arg(long, env = "VEIL_CA_FILE", value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Send the access token over `http://` to a host that is not loopback (a network you
    /// trust only).
    #[arg(long, env = "VEIL_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// Room (must match the token's).
    #[arg(long)]
    room: String,
    /// Access token (`veil token` or your application backend).
    #[arg(long, env = "VEIL_TOKEN")]
    token: String,
    /// Leave after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Publish VP8 video from an IVF file (looped at its end).
    #[arg(long, value_name = "FILE.ivf")]
    video: Option<PathBuf>,
    /// Publish Opus audio from an Ogg Opus file (looped at its end).
    #[arg(long, value_name = "FILE.ogg")]
    audio: Option<PathBuf>,
    /// Publish synthetic audio (50 packets/s) and video (30 frames/s); the default without
    /// --video or --audio.
    #[arg(long, conflicts_with_all = ["video", "audio", "receive_only"])]
    synthetic: bool,
    /// Synthetic video: a key frame every this many frames.
    #[arg(long, default_value_t = 60, value_name = "FRAMES")]
    key_interval: u64,
    /// Publish nothing; only receive.
    #[arg(long, conflicts_with_all = ["video", "audio"])]
    receive_only: bool,
    /// Save each other participant's decrypted media to DIR/PARTICIPANT.ivf (VP8) and
    /// DIR/PARTICIPANT.ogg (Opus).
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
    /// The local IP address media leaves from (default: the one this machine uses to reach
    /// the server's host).
    #[arg(long, env = "VEIL_MEDIA_IP", value_name = "IP")]
    media_ip: Option<std::net::IpAddr>,
    /// Also reach the SFU over TCP (ICE-TCP, for networks that block UDP; the server needs
    /// --sfu-tcp).
    #[arg(long, env = "VEIL_TCP")]
    tcp: bool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mint(
    data_dir: &std::path::Path,
    room: &str,
    identity: &str,
    ttl: u64,
) -> Result<String, String> {
    let key = veil_server::embedded_token_key(data_dir).map_err(|e| e.to_string())?;
    let claims = Claims::new(
        identity,
        room,
        Grants::all(),
        now_secs(),
        Duration::from_secs(ttl),
    );
    key.mint(&claims).map_err(|e| e.to_string())
}

/// The identity and room a token names. The client cannot verify the signature (the server
/// does); it only reads who it is going to be.
fn token_subject(token: &str) -> Result<(String, String), String> {
    let claims = token
        .split('.')
        .nth(1)
        .ok_or("the token is not a JWT (header.claims.signature)")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .map_err(|e| format!("token claims: {e}"))?;
    #[derive(serde::Deserialize)]
    struct Sub {
        sub: String,
        room: String,
    }
    let s: Sub = serde_json::from_slice(&bytes).map_err(|e| format!("token claims: {e}"))?;
    Ok((s.sub, s.room))
}

/// `--web-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
struct WebListen(Option<std::net::SocketAddr>);

fn parse_web_listen(s: &str) -> Result<WebListen, String> {
    if s == "off" {
        return Ok(WebListen(None));
    }
    s.parse()
        .map(|a| WebListen(Some(a)))
        .map_err(|e| format!("{s:?} is not an address like 127.0.0.1:7480, nor `off`: {e}"))
}

async fn server(args: ServerArgs) -> Result<(), String> {
    let mut cfg = veil_server::ServerConfig::embedded(args.data_dir.clone());
    cfg.listen = args.listen;
    cfg.web_listen = args.web_listen.0;
    cfg.insecure_plaintext = args.insecure_plaintext;
    // Two people can open these links in browsers, beside alice's `veil join`.
    let guests =
        ["bob", "carol"].map(|who| mint(&args.data_dir, &args.room, who, 86_400).map(|t| (who, t)));
    let guests: Vec<(&str, String)> = guests.into_iter().collect::<Result<_, _>>()?;
    cfg.metrics_listen = Some(std::net::SocketAddr::new(args.listen.ip(), 0));
    let token = mint(&args.data_dir, &args.room, "alice", 86_400)?;
    let room = args.room.clone();
    let data_dir = args.data_dir.display().to_string();
    veil_server::run(
        cfg,
        move |a| {
            // A closed stdout (a script that read the join line and went away) must not take
            // the server down: write errors are ignored.
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "Veil server (key service + blind SFU) on http://{} (state in {data_dir})",
                a.grpc
            );
            if let Some(m) = a.metrics {
                let _ = writeln!(out, "metrics: http://{m}/metrics");
            }
            let _ = writeln!(
                out,
                "\nJoin room {room:?} as alice, publishing synthetic audio and video:\n"
            );
            let _ = writeln!(
                out,
                "  veil join --url http://{} --room {room} --token {token}\n",
                a.grpc
            );
            let _ = writeln!(
                out,
                "Add --video FILE.ivf / --audio FILE.ogg to publish files, --save DIR to save the others' media."
            );
            let _ = writeln!(
                out,
                "Another participant: veil token --data-dir {data_dir} --room {room} --identity dave"
            );
            if let Some(web) = a.web {
                let _ = writeln!(out, "\nOr join from a browser (camera and microphone):\n");
                for (who, token) in &guests {
                    let link = veil_server::web::room_link(web, &room, token);
                    let _ = writeln!(out, "  as {who}: {link}");
                }
                let _ = writeln!(
                    out,
                    "\nEveryone in the call sees the same safety code; compare it aloud."
                );
            }
            let _ = out.flush();
        },
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await
    .map_err(|e| e.to_string())
}

async fn join(args: JoinArgs) -> Result<(), String> {
    let (identity, token_room) = token_subject(&args.token)?;
    if token_room != args.room {
        return Err(format!(
            "the token is for room {token_room:?}, not {:?}",
            args.room
        ));
    }
    let publish = if args.receive_only {
        join::Publish::Nothing
    } else if args.video.is_some() || args.audio.is_some() {
        join::Publish::Files {
            video: args.video,
            audio: args.audio,
        }
    } else {
        join::Publish::Synthetic {
            key_interval: args.key_interval,
        }
    };
    let mut security = veil_client::endpoint::Security {
        insecure_plaintext: args.insecure_plaintext,
        ..Default::default()
    };
    if let Some(ca) = &args.ca_file {
        security = security.with_ca_file(ca).map_err(|e| e.to_string())?;
    }
    join::run(join::Join {
        security,
        url: args.url,
        room: args.room,
        token: args.token,
        identity,
        seconds: args.seconds,
        publish,
        save: args.save,
        media_ip: args.media_ip,
        tcp: args.tcp,
    })
    .await
    .map_err(|e| {
        // rustls's words for a certificate from a CA this client does not trust.
        if e.contains("invalid peer certificate") {
            format!(
                "{e}\nthe server's TLS certificate is not trusted: pass --ca-file with the certificate of the CA that issued it"
            )
        } else {
            e
        }
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // webrtc-rs logs connection set-up chatter at warn; keep it out of the way.
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "warn,rtc=error,rtc_ice=error,rtc_dtls=error,webrtc=error".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let res = match Cli::parse().cmd {
        Cmd::Server(a) => server(a).await,
        Cmd::Token(a) => mint(&a.data_dir, &a.room, &a.identity, a.ttl).map(|t| println!("{t}")),
        Cmd::Join(a) => join(a).await,
        Cmd::Demo(a) if a.browser => demo::browser(a.web_listen, a.seconds).await,
        Cmd::Demo(a) => demo::run(a.participants.max(2), a.seconds.unwrap_or(10).max(3)).await,
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veil: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
