//! Pure conversions between bollard's types and the agent's: the create request, the
//! `Observed` view of a container, stats frames, image references, timestamps, and finding
//! the agent's own container. No I/O here.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    ContainerStatsResponse, ContainerSummary, ContainerSummaryStateEnum, EndpointSettings,
    HostConfig, NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};

use super::{ContainerSpec, DockerError, DEFAULT_NETWORK, LABEL_NETWORK};
use crate::model::{Millis, Observed, StatsSample, LABEL_APPLICATION, LABEL_MANAGED, LABEL_PORT};

/// Splits an image reference into the `fromImage` and `tag` query values of a pull
/// (`tag` may be a digest); no tag means `latest`.
pub(super) fn split_reference(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, digest);
    }
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

pub(super) fn create_body(spec: &ContainerSpec) -> Result<ContainerCreateBody, DockerError> {
    let invalid = |reason: &str| DockerError::InvalidSpec {
        name: spec.name.clone(),
        reason: reason.to_owned(),
    };
    let nano_cpus = match spec.cpus {
        Some(c) if !(c.is_finite() && c > 0.0) => {
            return Err(invalid("cpus must be a positive number"))
        }
        Some(c) => Some((c * 1e9).round() as i64),
        None => None,
    };
    let memory = match spec.memory_bytes {
        Some(m) => Some(i64::try_from(m).map_err(|_| invalid("memory limit too large"))?),
        None => None,
    };
    let network = spec
        .network
        .clone()
        .unwrap_or_else(|| DEFAULT_NETWORK.to_owned());
    let labels = HashMap::from([
        (LABEL_APPLICATION.to_owned(), spec.app.clone()),
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_PORT.to_owned(), spec.target_port.to_string()),
        (LABEL_NETWORK.to_owned(), network.clone()),
    ]);
    let host_config = HostConfig {
        nano_cpus,
        memory,
        network_mode: Some(network.clone()),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        labels: Some(labels),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(network, EndpointSettings::default())])),
        }),
        ..Default::default()
    })
}

/// `ip:port` from a container's networks: the one named by the network label, else the
/// first (by name) with an IP.
pub(super) fn address_of(
    networks: Option<&HashMap<String, EndpointSettings>>,
    labels: Option<&HashMap<String, String>>,
) -> Option<String> {
    let networks = networks?;
    let port: u16 = labels?.get(LABEL_PORT)?.parse().ok()?;
    let ip_of = |e: &EndpointSettings| e.ip_address.clone().filter(|ip| !ip.is_empty());
    let preferred = labels
        .and_then(|l| l.get(LABEL_NETWORK))
        .and_then(|n| networks.get(n))
        .and_then(ip_of);
    let ip = preferred.or_else(|| {
        let mut names: Vec<&String> = networks.keys().collect();
        names.sort();
        names.into_iter().find_map(|n| ip_of(&networks[n]))
    })?;
    Some(format!("{ip}:{port}"))
}

pub(super) fn observed_from_summary(c: ContainerSummary) -> Option<Observed> {
    let id = c.id?;
    let running = c.state == Some(ContainerSummaryStateEnum::RUNNING);
    let networks = c.network_settings.and_then(|n| n.networks);
    let address = running
        .then(|| address_of(networks.as_ref(), c.labels.as_ref()))
        .flatten();
    let name = c
        .names
        .and_then(|n| n.into_iter().next())
        .map(|n| n.trim_start_matches('/').to_owned())
        .unwrap_or_default();
    let created_ms = c
        .created
        .and_then(|s| u64::try_from(s).ok())
        .map_or(0, |s| s.saturating_mul(1000));
    Some(Observed {
        id,
        name,
        image: c.image.unwrap_or_default(),
        running,
        address,
        created_ms,
    })
}

pub(super) fn observed_from_inspect(c: ContainerInspectResponse) -> Option<Observed> {
    let id = c.id?;
    let running = c.state.and_then(|s| s.status) == Some(ContainerStateStatusEnum::RUNNING);
    let (image, labels) = match c.config {
        Some(cfg) => (cfg.image, cfg.labels),
        None => (None, None),
    };
    let networks = c.network_settings.and_then(|n| n.networks);
    let address = running
        .then(|| address_of(networks.as_ref(), labels.as_ref()))
        .flatten();
    Some(Observed {
        id,
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        image: image.or(c.image).unwrap_or_default(),
        running,
        address,
        // Whole seconds, as the list endpoint gives them, so both views agree.
        created_ms: c
            .created
            .as_deref()
            .and_then(parse_rfc3339_ms)
            .map_or(0, |ms| ms - ms % 1000),
    })
}

/// Parses Docker's `2024-05-01T10:20:30.123456789Z` (or a `±hh:mm` offset) to epoch ms.
pub(super) fn parse_rfc3339_ms(s: &str) -> Option<Millis> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = s.get(19..)?;
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    let millis: i64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    let offset_s = match zone {
        "Z" | "z" => 0,
        z if z.len() == 6 => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (z.get(1..3)?.parse::<i64>().ok()? * 3600
                + z.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    u64::try_from(secs * 1000 + millis).ok()
}

/// Maps one Docker stats frame to a [`StatsSample`]; missing fields become 0.
pub(super) fn sample_from_stats(s: &ContainerStatsResponse, at_ms: Millis) -> StatsSample {
    let cpu = s.cpu_stats.as_ref();
    let precpu = s.precpu_stats.as_ref();
    let total = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
            .unwrap_or(0)
    };
    let online_cpus = cpu
        .and_then(|c| c.online_cpus)
        .filter(|n| *n > 0)
        .or_else(|| {
            cpu.and_then(|c| c.cpu_usage.as_ref())
                .and_then(|u| u.percpu_usage.as_ref())
                .and_then(|p| u32::try_from(p.iter().filter(|v| **v > 0).count()).ok())
                .filter(|n| *n > 0)
        })
        .unwrap_or(1);
    let mem = s.memory_stats.as_ref();
    let usage = mem.and_then(|m| m.usage).unwrap_or(0);
    let cache = mem
        .and_then(|m| m.stats.as_ref())
        .and_then(|st| {
            st.get("total_inactive_file")
                .or_else(|| st.get("inactive_file"))
        })
        .copied()
        .filter(|c| *c < usage)
        .unwrap_or(0);
    let (rx, tx) = s.networks.as_ref().map_or((0, 0), |nets| {
        nets.values().fold((0u64, 0u64), |(rx, tx), n| {
            (
                rx.saturating_add(n.rx_bytes.unwrap_or(0)),
                tx.saturating_add(n.tx_bytes.unwrap_or(0)),
            )
        })
    });
    StatsSample {
        at_ms,
        cpu_total_ns: total(cpu),
        precpu_total_ns: total(precpu),
        system_ns: cpu.and_then(|c| c.system_cpu_usage).unwrap_or(0),
        presystem_ns: precpu.and_then(|c| c.system_cpu_usage).unwrap_or(0),
        online_cpus,
        mem_used: usage - cache,
        mem_limit: mem.and_then(|m| m.limit).unwrap_or(0),
        net_rx_bytes: rx,
        net_tx_bytes: tx,
    }
}

pub(super) fn is_empty_sample(s: &StatsSample) -> bool {
    s.cpu_total_ns == 0 && s.system_ns == 0 && s.mem_limit == 0
}

/// Names under which this process's own container may be known to the engine: the id in
/// the source of the `/etc/hostname` bind mount, then the hostname (only when it looks like
/// a container id, unless `/.dockerenv` says we are in a container).
pub(super) fn self_container_candidates(
    mountinfo: &str,
    hostname: &str,
    in_container: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(4) != Some(&"/etc/hostname") {
            continue;
        }
        let Some(root) = fields.get(3) else { continue };
        let id = root
            .split('/')
            .skip_while(|part| *part != "containers")
            .nth(1)
            .filter(|id| id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()));
        if let Some(id) = id {
            out.push(id.to_owned());
        }
    }
    let looks_like_id =
        (12..=64).contains(&hostname.len()) && hostname.chars().all(|c| c.is_ascii_hexdigit());
    if !hostname.is_empty()
        && (in_container || looks_like_id)
        && !out.iter().any(|id| id.starts_with(hostname))
    {
        out.push(hostname.to_owned());
    }
    out
}

/// Picks the network app containers should join from the agent's own networks.
pub(super) fn pick_own_network(mut names: Vec<String>) -> Option<String> {
    names.retain(|n| n != "host" && n != "none");
    names.sort();
    names
        .iter()
        .find(|n| n.as_str() != DEFAULT_NETWORK)
        .or_else(|| names.first())
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references() {
        assert_eq!(split_reference("redis"), ("redis", "latest"));
        assert_eq!(
            split_reference("rustybalancer/playground:1.2"),
            ("rustybalancer/playground", "1.2")
        );
        assert_eq!(
            split_reference("localhost:5000/app"),
            ("localhost:5000/app", "latest")
        );
        assert_eq!(
            split_reference("localhost:5000/app:v1"),
            ("localhost:5000/app", "v1")
        );
        assert_eq!(split_reference("app@sha256:abc"), ("app", "sha256:abc"));
    }

    #[test]
    fn parses_docker_timestamps() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2024-03-01T12:00:00.123456789Z"),
            Some(1_709_294_400_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-03-01T13:00:00.5+01:00"),
            Some(1_709_294_400_500)
        );
        assert_eq!(parse_rfc3339_ms("garbage"), None);
    }

    #[test]
    fn finds_own_container() {
        let id = "a".repeat(64);
        let mountinfo = format!(
            "600 590 8:1 /var/lib/docker/containers/{id}/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw\n\
             601 590 8:1 /var/lib/docker/containers/{id}/hosts /etc/hosts rw - ext4 /dev/sda1 rw"
        );
        assert_eq!(
            self_container_candidates(&mountinfo, "aaaaaaaaaaaa", true),
            vec![id]
        );
        assert_eq!(
            self_container_candidates("", "my-laptop", false),
            Vec::<String>::new()
        );
        assert_eq!(
            self_container_candidates("", "my-agent", true),
            vec!["my-agent".to_owned()]
        );
        assert_eq!(
            self_container_candidates("", "0123456789ab", false),
            vec!["0123456789ab".to_owned()]
        );
    }

    #[test]
    fn picks_user_network_over_bridge() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            pick_own_network(v(&["bridge", "rb_default"])),
            Some("rb_default".into())
        );
        assert_eq!(pick_own_network(v(&["bridge"])), Some("bridge".into()));
        assert_eq!(pick_own_network(v(&["host"])), None);
        assert_eq!(pick_own_network(v(&[])), None);
    }

    #[test]
    fn maps_stats_frames() {
        let frame: ContainerStatsResponse = serde_json::from_value(serde_json::json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 500, "percpu_usage": [300, 200]},
                          "system_cpu_usage": 10_000},
            "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 5_000},
            "memory_stats": {"usage": 1000, "limit": 4000, "stats": {"total_inactive_file": 200}},
            "networks": {"eth0": {"rx_bytes": 10, "tx_bytes": 20}, "eth1": {"rx_bytes": 1, "tx_bytes": 2}}
        }))
        .expect("valid frame");
        let s = sample_from_stats(&frame, 7);
        assert_eq!(
            s,
            StatsSample {
                at_ms: 7,
                cpu_total_ns: 500,
                precpu_total_ns: 100,
                system_ns: 10_000,
                presystem_ns: 5_000,
                online_cpus: 2,
                mem_used: 800,
                mem_limit: 4000,
                net_rx_bytes: 11,
                net_tx_bytes: 22,
            }
        );
        let empty: ContainerStatsResponse =
            serde_json::from_value(serde_json::json!({})).expect("empty frame");
        let s = sample_from_stats(&empty, 1);
        assert!(is_empty_sample(&s));
        assert_eq!(s.online_cpus, 1);
    }
}
