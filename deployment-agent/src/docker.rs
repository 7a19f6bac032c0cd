//! The Docker edge: the only module that talks to the engine (through bollard).
//!
//! One [`Docker`] handle per process; clones share bollard's transport. Every call maps
//! bollard's errors to [`DockerError`], and [`is_unavailable`] tells the caller when the
//! engine itself is unreachable (so it backs off instead of acting on a half-known world).
//!
//! Containers we create carry the labels `application=<APP_IDENTIFIER>`,
//! `rustybalancer.managed=true`, `rustybalancer.port=<target port>` and
//! `rustybalancer.network=<network>` (the network their address lives on), so a restarted
//! agent can adopt them and knows their address without any other state.
//!
//! The engine's API version is negotiated once in [`Docker::connect`] (bollard defaults to a
//! newer API than, for example, Docker 20.10 accepts).
//!
//! The pure mapping between bollard's types and ours (create request, [`Observed`], stats
//! frames, image references) lives in the private `convert` submodule, unit-tested there.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions,
    RemoveContainerOptions, StatsOptions, StopContainerOptions,
};
use futures_util::{future, Stream, StreamExt};
use log::{debug, info, warn};

use crate::model::{now_ms, Millis, Observed, StatsSample, LABEL_APPLICATION, LABEL_MANAGED};

mod convert;
use convert::{
    create_body, is_empty_sample, observed_from_inspect, observed_from_summary, pick_own_network,
    sample_from_stats, self_container_candidates, split_reference,
};

/// Label holding the network a container's address lives on (set by [`Docker::create_and_start`]).
pub const LABEL_NETWORK: &str = "rustybalancer.network";
/// Network used when a [`ContainerSpec`] names none.
pub const DEFAULT_NETWORK: &str = "bridge";
/// Time limit for getting the response headers of one engine request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A pull attempt fails when the engine reports no progress for this long.
const PULL_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const PULL_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What went wrong talking to the Docker engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("invalid DOCKER_HOST {host:?}: {reason}")]
    InvalidHost { host: String, reason: String },
    #[error("Docker engine unreachable (while trying to {op}): {source}")]
    Unavailable {
        op: String,
        #[source]
        source: Box<BollardError>,
    },
    #[error("container name {name:?} is already in use")]
    NameInUse { name: String },
    #[error("image {image:?} is not available locally and could not be pulled ({attempts} attempt(s)): {reason}")]
    ImageUnavailable {
        image: String,
        attempts: u32,
        reason: String,
    },
    #[error("container {id} not found")]
    NotFound { id: String },
    #[error("invalid container spec for {name:?}: {reason}")]
    InvalidSpec { name: String, reason: String },
    #[error("Docker engine refused to {op} (HTTP {status}): {message}")]
    Api {
        op: String,
        status: u16,
        message: String,
    },
    #[error("Docker request failed (while trying to {op}): {source}")]
    Other {
        op: String,
        #[source]
        source: Box<BollardError>,
    },
}

/// True when the error means the engine could not be reached at all (back off and retry).
pub fn is_unavailable(err: &DockerError) -> bool {
    matches!(err, DockerError::Unavailable { .. })
}

/// Maps a bollard error to a [`DockerError`], naming the operation.
fn classify(op: impl Into<String>, err: BollardError) -> DockerError {
    let op = op.into();
    match err {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => DockerError::Api {
            op,
            status: status_code,
            message,
        },
        BollardError::RequestTimeoutError
        | BollardError::HyperLegacyError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::IOError { .. }
        | BollardError::SocketNotFoundError(_) => DockerError::Unavailable {
            op,
            source: Box::new(err),
        },
        other => DockerError::Other {
            op,
            source: Box::new(other),
        },
    }
}

fn status_of(err: &BollardError) -> Option<u16> {
    match err {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// What to run: one app container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Container name (unique on the engine).
    pub name: String,
    pub image: String,
    /// `APP_IDENTIFIER`: the value of the `application` label.
    pub app: String,
    /// Port the app listens on inside the container.
    pub target_port: u16,
    /// Network to attach to; `None` = Docker's default `bridge`.
    pub network: Option<String>,
    /// CPU limit in CPUs (e.g. `0.5`), `None` = unlimited.
    pub cpus: Option<f64>,
    /// Memory limit in bytes, `None` = unlimited.
    pub memory_bytes: Option<u64>,
    /// `KEY=value` environment entries.
    pub env: Vec<String>,
}

/// A die/destroy event for one of our containers (see [`Docker::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub id: String,
    /// `die` or `destroy`.
    pub action: String,
    pub at_ms: Millis,
}

/// The Docker engine; cheap to clone (clones share one connection pool).
#[derive(Clone)]
pub struct Docker {
    client: bollard::Docker,
    host: Arc<str>,
}

impl std::fmt::Debug for Docker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Docker").field("host", &self.host).finish()
    }
}

impl Docker {
    /// Connects to `docker_host` (`unix:///path`, a bare socket path, `tcp://host:port` or
    /// `http://host:port`; empty = the local default) and negotiates the API version.
    ///
    /// Fails with [`DockerError::Unavailable`] when the engine does not answer, so the caller
    /// can retry with backoff; the handle is only returned once the engine has answered.
    pub async fn connect(docker_host: &str) -> Result<Docker, DockerError> {
        let host = docker_host.trim();
        let secs = REQUEST_TIMEOUT.as_secs();
        let version = bollard::API_DEFAULT_VERSION;
        let client = if host.is_empty() {
            bollard::Docker::connect_with_local_defaults()
        } else if host.starts_with("unix://") || host.starts_with('/') {
            bollard::Docker::connect_with_unix(host, secs, version)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            bollard::Docker::connect_with_http(host, secs, version)
        } else {
            return Err(DockerError::InvalidHost {
                host: host.to_owned(),
                reason: "expected unix:///path/to/docker.sock, tcp://host:port or http://host:port"
                    .to_owned(),
            });
        };
        let client = client.map_err(|e| match e {
            BollardError::SocketNotFoundError(_) => classify(format!("connect to {host}"), e),
            other => DockerError::InvalidHost {
                host: host.to_owned(),
                reason: other.to_string(),
            },
        })?;
        let client = client
            .negotiate_version()
            .await
            .map_err(|e| classify(format!("negotiate the API version with {host}"), e))?;
        let v = client.client_version();
        let host = if host.is_empty() {
            "the local engine"
        } else {
            host
        };
        info!(
            "docker: connected to {host} (API {}.{})",
            v.major_version, v.minor_version
        );
        Ok(Docker {
            client,
            host: Arc::from(host),
        })
    }

    /// Makes sure `image` exists locally: inspects it, and when absent pulls it, retrying
    /// `retries` times with exponential backoff. Logs one line per layer status change.
    pub async fn ensure_image(&self, image: &str, retries: u32) -> Result<(), DockerError> {
        match self.client.inspect_image(image).await {
            Ok(_) => {
                debug!("docker: image {image} present");
                return Ok(());
            }
            Err(e) if status_of(&e) == Some(404) => info!("docker: image {image} absent, pulling"),
            Err(e) => return Err(classify(format!("inspect image {image}"), e)),
        }
        let attempts = retries.saturating_add(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.pull_once(image).await {
                Ok(()) => {
                    info!("docker: pulled {image} (attempt {attempt}/{attempts})");
                    return Ok(());
                }
                Err(e) if is_unavailable(&e) => return Err(e),
                Err(e) => {
                    last = match e {
                        DockerError::ImageUnavailable { reason, .. } => reason,
                        DockerError::Api {
                            status, message, ..
                        } => format!("HTTP {status}: {message}"),
                        other => other.to_string(),
                    };
                    warn!("docker: pull {image} attempt {attempt}/{attempts} failed: {last}");
                }
            }
            if attempt < attempts {
                let backoff =
                    Duration::from_secs(1u64 << (attempt - 1).min(5)).min(PULL_BACKOFF_MAX);
                tokio::time::sleep(backoff).await;
            }
        }
        Err(DockerError::ImageUnavailable {
            image: image.to_owned(),
            attempts,
            reason: last,
        })
    }

    async fn pull_once(&self, image: &str) -> Result<(), DockerError> {
        let (from_image, tag) = split_reference(image);
        let options = CreateImageOptions {
            from_image: Some(from_image.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let mut stream = self.client.create_image(Some(options), None, None);
        let mut last_status: HashMap<String, String> = HashMap::new();
        loop {
            let item = match tokio::time::timeout(PULL_IDLE_TIMEOUT, stream.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => {
                    return Err(DockerError::ImageUnavailable {
                        image: image.to_owned(),
                        attempts: 1,
                        reason: format!("no pull progress for {}s", PULL_IDLE_TIMEOUT.as_secs()),
                    })
                }
            };
            let info = item.map_err(|e| classify(format!("pull image {image}"), e))?;
            if let Some(detail) = info.error_detail {
                return Err(DockerError::ImageUnavailable {
                    image: image.to_owned(),
                    attempts: 1,
                    reason: detail.message.unwrap_or_else(|| "pull failed".to_owned()),
                });
            }
            let (Some(status), layer) = (info.status, info.id.unwrap_or_default()) else {
                continue;
            };
            if last_status.get(&layer) != Some(&status) {
                info!("docker: pull {image}: {layer} {status}");
                last_status.insert(layer, status);
            }
        }
        // The stream can end without an error item when the engine gives up: check.
        self.client
            .inspect_image(image)
            .await
            .map(|_| ())
            .map_err(|e| match status_of(&e) {
                Some(404) => DockerError::ImageUnavailable {
                    image: image.to_owned(),
                    attempts: 1,
                    reason: "pull finished but the image is still missing".to_owned(),
                },
                _ => classify(format!("inspect image {image}"), e),
            })
    }

    /// The network of the container this process runs in (the first attached network other
    /// than `host`/`none`, preferring user networks over `bridge`); `None` outside a container.
    pub async fn own_network(&self) -> Result<Option<String>, DockerError> {
        let in_container = Path::new("/.dockerenv").exists();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let hostname = std::fs::read_to_string("/etc/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        for candidate in self_container_candidates(&mountinfo, hostname.trim(), in_container) {
            match self.client.inspect_container(&candidate, None).await {
                Ok(info) => {
                    let names = info
                        .network_settings
                        .and_then(|n| n.networks)
                        .map(|n| n.into_keys().collect::<Vec<_>>())
                        .unwrap_or_default();
                    let network = pick_own_network(names);
                    info!("docker: running in container {candidate}, network {network:?}");
                    return Ok(network);
                }
                Err(e) if status_of(&e) == Some(404) => continue,
                Err(e) => return Err(classify(format!("inspect own container {candidate}"), e)),
            }
        }
        if in_container {
            warn!("docker: /.dockerenv exists but no container matches this process (hostname {:?}); assuming no own network", hostname.trim());
        }
        Ok(None)
    }

    /// Creates and starts one app container, then returns what Docker reports about it
    /// (`address` = its IP on the spec's network + the target port).
    pub async fn create_and_start(&self, spec: &ContainerSpec) -> Result<Observed, DockerError> {
        let body = create_body(spec)?;
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let created = match self.client.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(e) => {
                return Err(match status_of(&e) {
                    Some(409) => DockerError::NameInUse {
                        name: spec.name.clone(),
                    },
                    Some(404) => DockerError::ImageUnavailable {
                        image: spec.image.clone(),
                        attempts: 0,
                        reason: e.to_string(),
                    },
                    _ => classify(format!("create container {}", spec.name), e),
                })
            }
        };
        for warning in &created.warnings {
            warn!("docker: create {}: {warning}", spec.name);
        }
        if let Err(e) = self.client.start_container(&created.id, None).await {
            let err = classify(format!("start container {}", spec.name), e);
            if let Err(rm) = self.remove(&created.id).await {
                warn!(
                    "docker: could not remove {} after a failed start: {rm}",
                    spec.name
                );
            }
            return Err(err);
        }
        info!(
            "docker: started {} ({}) from {}",
            spec.name,
            short(&created.id),
            spec.image
        );
        self.inspect(&created.id)
            .await?
            .ok_or(DockerError::NotFound { id: created.id })
    }

    /// Every container (any state) labelled as ours for `app`.
    pub async fn list_ours(&self, app: &str) -> Result<Vec<Observed>, DockerError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL_APPLICATION}={app}"),
                format!("{LABEL_MANAGED}=true"),
            ],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .client
            .list_containers(Some(options))
            .await
            .map_err(|e| classify(format!("list containers of {app}"), e))?;
        Ok(list.into_iter().filter_map(observed_from_summary).collect())
    }

    /// What Docker reports about container `id` (any state); `None` when it does not exist.
    pub async fn inspect(&self, id: &str) -> Result<Option<Observed>, DockerError> {
        match self.client.inspect_container(id, None).await {
            Ok(info) => Ok(observed_from_inspect(info)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(classify(format!("inspect container {id}"), e)),
        }
    }

    /// Stops `id` (SIGTERM, then SIGKILL after `grace`) and removes it with its volumes.
    /// Idempotent: a container already stopped or gone is fine.
    pub async fn stop_and_remove(&self, id: &str, grace: Duration) -> Result<(), DockerError> {
        let secs = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptions {
            t: Some(secs),
            ..Default::default()
        };
        // The stop call returns only once the container is down: allow for the grace period.
        let client = self.client.clone().with_timeout(grace + REQUEST_TIMEOUT);
        match client.stop_container(id, Some(options)).await {
            Ok(()) => info!("docker: stopped {}", short(id)),
            Err(e) if matches!(status_of(&e), Some(304 | 404)) => {
                debug!("docker: {} already stopped or gone", short(id));
            }
            Err(e) => return Err(classify(format!("stop container {id}"), e)),
        }
        self.remove(id).await
    }

    async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.client.remove_container(id, Some(options)).await {
            Ok(()) => {
                info!("docker: removed {}", short(id));
                Ok(())
            }
            // 409: removal already in progress.
            Err(e) if matches!(status_of(&e), Some(304 | 404 | 409)) => {
                debug!("docker: {} already removed ({e})", short(id));
                Ok(())
            }
            Err(e) => Err(classify(format!("remove container {id}"), e)),
        }
    }

    /// One long-lived streaming stats request for container `id`, mapped to [`StatsSample`]s.
    ///
    /// Frames carrying no information (all counters zero, as Docker sends for a stopped
    /// container) are skipped; the stream ends when the container goes away.
    pub fn stats_stream(
        &self,
        id: &str,
    ) -> impl Stream<Item = Result<StatsSample, DockerError>> + Send + 'static {
        let options = StatsOptions {
            stream: true,
            one_shot: false,
        };
        let id = id.to_owned();
        self.client
            .stats(&id, Some(options))
            .filter_map(move |item| {
                future::ready(match item {
                    Ok(frame) => {
                        let sample = sample_from_stats(&frame, now_ms());
                        (!is_empty_sample(&sample)).then_some(Ok(sample))
                    }
                    Err(e) if status_of(&e) == Some(404) => {
                        Some(Err(DockerError::NotFound { id: id.clone() }))
                    }
                    Err(e) => Some(Err(classify(format!("read stats of {id}"), e))),
                })
            })
    }

    /// `die` and `destroy` events of our containers for `app` (one long-lived request),
    /// from the time of this call on.
    pub fn events(
        &self,
        app: &str,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + 'static {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "event".to_owned(),
                vec!["die".to_owned(), "destroy".to_owned()],
            ),
            (
                "label".to_owned(),
                vec![
                    format!("{LABEL_APPLICATION}={app}"),
                    format!("{LABEL_MANAGED}=true"),
                ],
            ),
        ]);
        // `since` (now, minus a second of slack for clock skew): the request is only sent
        // when the stream is first polled, and events before that poll must not be lost.
        let since = (now_ms() / 1000).saturating_sub(1).to_string();
        let options = EventsOptions {
            since: Some(since),
            filters: Some(filters),
            ..Default::default()
        };
        self.client.events(Some(options)).filter_map(|item| {
            future::ready(match item {
                Ok(msg) => {
                    let at_ms = msg
                        .time_nano
                        .and_then(|n| u64::try_from(n / 1_000_000).ok())
                        .unwrap_or_else(now_ms);
                    match (msg.actor.and_then(|a| a.id), msg.action) {
                        (Some(id), Some(action)) => Some(Ok(ContainerEvent { id, action, at_ms })),
                        _ => None,
                    }
                }
                Err(e) => Some(Err(classify("read events", e))),
            })
        })
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
