//! `slr ca ...` (the operator CA and node certificates for the state update protocol) and
//! `slr gateway-site` (a network configuration site serving a gateway table over HTTPS).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// `slr ca` subcommands.
#[derive(Subcommand)]
pub enum CaCommand {
    /// Create an operator CA: DIR/ca.pem and DIR/ca.key (refuses to overwrite).
    Init {
        /// Directory for the CA's files (created if missing).
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "slr operator CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u64,
    },
    /// Issue a certificate for a node (router, host agent or configuration site): OUT/NAME.pem
    /// and OUT/NAME.key, with NAME as its DNS name (what peers check).
    Issue {
        /// Directory of the CA (ca.pem, ca.key).
        dir: PathBuf,
        /// Node name (lowercase DNS name: as1, site-a, h1).
        name: String,
        /// Output directory (default: the CA's).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days, from now.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Issue an already expired certificate (valid from 2 days ago to 1 day ago), to test
        /// that peers refuse it.
        #[arg(long)]
        expired: bool,
    },
}

/// `slr gateway-site`: serve a gateway table file over HTTPS at /gateways.json.
#[derive(Args)]
pub struct GatewaySiteArgs {
    /// The gateway table (JSON, see docs/CONFIG.md); re-read when it changes.
    #[arg(long)]
    file: PathBuf,
    /// Listen address.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Operator CA certificate.
    #[arg(long)]
    ca: PathBuf,
    /// The site's certificate.
    #[arg(long)]
    cert: PathBuf,
    /// The site's key.
    #[arg(long)]
    key: PathBuf,
}

const DAY: Duration = Duration::from_secs(86_400);

/// Runs an `slr ca` subcommand.
pub fn run_ca(cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Init { dir, name, days } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("{}: cannot create", dir.display()))?;
            let f = slr_control::create_ca(&dir, &name, DAY * days as u32)?;
            println!("{}\n{}", f.cert.display(), f.key.display());
        }
        CaCommand::Issue {
            dir,
            name,
            out,
            days,
            expired,
        } => {
            let out = out.unwrap_or_else(|| dir.clone());
            std::fs::create_dir_all(&out)
                .with_context(|| format!("{}: cannot create", out.display()))?;
            let now = SystemTime::now();
            let (from, until) = if expired {
                (now - 2 * DAY, now - DAY)
            } else {
                // A minute of slack for clocks that differ a little.
                (now - Duration::from_secs(60), now + DAY * days as u32)
            };
            let f = slr_control::issue(&dir, &name, &out, from, until)?;
            println!("{}\n{}", f.cert.display(), f.key.display());
        }
    }
    Ok(())
}

/// Runs `slr gateway-site` until SIGTERM or SIGINT.
pub fn run_gateway_site(a: GatewaySiteArgs) -> Result<()> {
    crate::daemon::init_logging(crate::daemon::LogFormat::Text);
    let identity = slr_control::Identity::load(&a.ca, &a.cert, &a.key)?;
    slr_control::GatewayTable::from_json(
        &std::fs::read(&a.file).with_context(|| format!("{}: cannot read", a.file.display()))?,
    )
    .with_context(|| format!("{}", a.file.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        tracing::info!(listen = %a.listen, file = %a.file.display(), "gateway site up");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        slr_control::serve_gateway_site(a.file.clone(), listener, &identity, stop).await?;
        tracing::info!("gateway site down");
        anyhow::Ok(())
    })
}

/// `slr report`: one Hello and one Report to a parent, printing its answers: checks
/// certificates and gateway entries by hand (what a child would be told).
#[derive(Args)]
pub struct ReportArgs {
    /// The parent: NAME@ADDRESS:PORT (NAME is checked against its certificate).
    #[arg(long)]
    parent: String,
    /// The name to say hello as (it must be the certificate's name).
    #[arg(long)]
    name: String,
    /// Operator CA certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Certificate to present.
    #[arg(long)]
    cert: PathBuf,
    /// Its key.
    #[arg(long)]
    key: PathBuf,
    /// A subnet to report, with metrics: SUBNET[:name=value,...], e.g.
    /// 10.99.0.0/24:load=0.2,flows=3 (repeatable).
    #[arg(long = "subnet", required = true)]
    subnets: Vec<String>,
    /// After the report, a shortcut signal (F10) to send: CLIENT:PORT-VIP:PORT/tcp@HOST (or
    /// /udp), e.g. 10.200.1.2:40000-10.99.0.1:80/tcp@10.200.10.2 (repeatable). Exits non-zero
    /// if the parent refuses any.
    #[arg(long = "shortcut")]
    shortcuts: Vec<String>,
}

/// `CLIENT:PORT-VIP:PORT/tcp@HOST` as a protobuf signal.
fn parse_signal(s: &str) -> Result<slr_control::proto::MirrorFlow> {
    let bad = || anyhow::anyhow!("--shortcut {s:?}: expected CLIENT:PORT-VIP:PORT/tcp@HOST");
    let (flow, host) = s.split_once('@').ok_or_else(bad)?;
    let (ends, proto) = flow.split_once('/').ok_or_else(bad)?;
    let (src, dst) = ends.split_once('-').ok_or_else(bad)?;
    let src: std::net::SocketAddrV4 = src.parse().map_err(|_| bad())?;
    let dst: std::net::SocketAddrV4 = dst.parse().map_err(|_| bad())?;
    let host: std::net::Ipv4Addr = host.parse().map_err(|_| bad())?;
    let protocol = match proto {
        "tcp" => 6,
        "udp" => 17,
        _ => return Err(bad()),
    };
    Ok(slr_control::proto::MirrorFlow {
        src: u32::from(*src.ip()),
        dst: u32::from(*dst.ip()),
        src_port: u32::from(src.port()),
        dst_port: u32::from(dst.port()),
        protocol,
        next_hop: u32::from(host),
    })
}

/// Runs `slr report`. Exits non-zero if the parent refuses the session or any subnet.
pub fn run_report(a: ReportArgs) -> Result<()> {
    use slr_control::proto::{HelloRequest, ReportRequest};
    let (pname, paddr) = a.parent.split_once('@').ok_or_else(|| {
        anyhow::anyhow!("--parent: expected NAME@ADDRESS:PORT, got {:?}", a.parent)
    })?;
    let paddr: std::net::SocketAddr = paddr
        .parse()
        .map_err(|_| anyhow::anyhow!("--parent: {paddr:?} is not ADDRESS:PORT"))?;
    let mut loads = Vec::new();
    for s in &a.subnets {
        let (net, metrics) = s.split_once(':').unwrap_or((s, ""));
        let mut m = std::collections::BTreeMap::new();
        for kv in metrics.split(',').filter(|x| !x.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("--subnet {s:?}: metric {kv:?} is not name=value")
            })?;
            let v: f64 = v
                .parse()
                .map_err(|_| anyhow::anyhow!("--subnet {s:?}: {v:?} is not a number"))?;
            m.insert(k.to_owned(), v);
        }
        loads.push((net.to_owned(), m));
    }
    let signals = a
        .shortcuts
        .iter()
        .map(|s| parse_signal(s))
        .collect::<Result<Vec<_>>>()?;
    let identity = slr_control::Identity::load(&a.ca, &a.cert, &a.key)?;
    let reporter = slr_control::Reporter::new(&identity, pname, paddr, &a.name, "probe")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut client = tokio::time::timeout(Duration::from_secs(5), reporter.connect())
            .await
            .map_err(|_| anyhow::anyhow!("connect to {paddr}: timed out"))??;
        let hello = client
            .hello(HelloRequest {
                child_name: a.name.clone(),
                level: "probe".into(),
                software_version: env!("CARGO_PKG_VERSION").into(),
                subnets: loads.iter().map(|(n, _)| n.clone()).collect(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("hello refused: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        println!(
            "hello accepted: session {} report_interval_ms {} allowed {:?}",
            hello.session_id, hello.report_interval_ms, hello.allowed_subnets
        );
        let reply = client
            .report(ReportRequest {
                session_id: hello.session_id,
                sequence: 1,
                subnets: loads
                    .into_iter()
                    .map(|(subnet, metrics)| slr_control::proto::SubnetLoad {
                        subnet,
                        metrics: metrics.into_iter().collect(),
                    })
                    .collect(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("report refused: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        println!("report: {} subnet(s) accepted", reply.accepted);
        for r in &reply.refused {
            println!("refused: {} ({})", r.subnet, r.reason);
        }
        if !reply.refused.is_empty() {
            return Err(anyhow::anyhow!("{} subnet(s) refused", reply.refused.len()));
        }
        if signals.is_empty() {
            return Ok(());
        }
        let n = signals.len();
        let answer = client
            .shortcut(slr_control::proto::ShortcutRequest {
                session_id: hello.session_id,
                signals,
                keepalives: Vec::new(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("shortcut refused: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        let mut refused = 0;
        for (spec, verdict) in a.shortcuts.iter().zip(&answer.signals) {
            println!("shortcut {spec}: {verdict}");
            refused += usize::from(!matches!(verdict.as_str(), "installed" | "relayed"));
        }
        if refused > 0 || answer.signals.len() != n {
            Err(anyhow::anyhow!("{refused} shortcut signal(s) refused"))
        } else {
            Ok(())
        }
    })
}
