//! The act and persist stages: apply a round's [`Plan`] to the pool and to Docker (creations
//! run concurrently, a few at a time; stop-and-remove runs in the background), then write
//! what changed to Redis in one atomic pipeline.

use std::collections::HashMap;

use futures_util::StreamExt;
use log::{error, info, warn};

use super::decide::{adopted, Action, Plan};
use super::Controller;
use crate::docker::{ContainerSpec, DockerError};
use crate::model::{now_ms, Category, Container, EventKind, Millis};

/// Containers created at the same time.
const CREATE_CONCURRENCY: usize = 4;

impl Controller {
    /// Applies the plan: state first, then the Docker actions.
    pub(super) async fn act(&mut self, plan: Plan, now: Millis) {
        self.desired = plan.desired;
        self.scaler = plan.scaler.clone();
        self.last_check_ms = plan.last_check_ms;
        if let Some(d) = &plan.decision {
            log::debug!("scaling: {d}");
            self.last_decision = d.clone();
        }
        self.scale_ups += plan.count(EventKind::ScaleUp) as u64;
        self.scale_downs += plan.count(EventKind::ScaleDown) as u64;
        self.replaced += (plan.count(EventKind::ContainerReplaced)
            + plan.count(EventKind::ContainerVanished)) as u64;
        for (kind, reason, details) in plan.events {
            self.log.record(kind, reason, details);
        }
        let mut create = Vec::new();
        for action in plan.actions {
            match action {
                Action::Address { id, address } => {
                    if let Some(t) = self.pool.get_mut(&id) {
                        t.c.address = address;
                    }
                }
                Action::Adopt(o) => self.track(adopted(&o)),
                Action::Forget { id } => {
                    self.pool.remove(&id);
                }
                Action::Replace { id, name } | Action::Stop { id, name } => {
                    self.start_removal(&id, &name)
                }
                Action::Create(names) => create = names,
                Action::Sundown { id } => {
                    if let Some(t) = self.pool.get_mut(&id) {
                        t.c.category = Category::Sundown;
                        t.c.sundown_ms = Some(now);
                        t.c.sundown_version = None;
                        t.c.sundown_balancers.clear();
                    }
                }
                Action::Ready { id } => {
                    if let Some(t) = self.pool.get_mut(&id) {
                        t.c.ready_ms = Some(now_ms().max(now));
                    }
                }
            }
        }
        if !create.is_empty() {
            self.create(create).await;
        }
    }

    /// Creates and starts containers with these names, [`CREATE_CONCURRENCY`] at a time.
    async fn create(&mut self, names: Vec<String>) {
        let count = names.len();
        let specs: Vec<ContainerSpec> = names
            .into_iter()
            .map(|name| ContainerSpec {
                name,
                image: self.cfg.image.clone(),
                app: self.cfg.app.clone(),
                target_port: self.cfg.target_port,
                network: self.network.clone(),
                cpus: self.cfg.container.cpus,
                memory_bytes: self.cfg.container.memory_bytes,
                env: self.cfg.container.env.clone(),
            })
            .collect();
        let docker = self.docker.clone();
        let results: Vec<_> = futures_util::stream::iter(specs)
            .map(|spec| {
                let docker = docker.clone();
                async move {
                    let r = docker.create_and_start(&spec).await;
                    (spec.name, r)
                }
            })
            .buffer_unordered(CREATE_CONCURRENCY)
            .collect()
            .await;
        let mut started = 0;
        for (name, result) in results {
            match result {
                Ok(o) => {
                    started += 1;
                    self.log.record(
                        EventKind::ContainerStarted,
                        format!("started {name} ({started} of {count})"),
                        serde_json::json!({ "id": o.id, "name": name, "desired": self.desired }),
                    );
                    self.track(Container {
                        id: o.id,
                        name: o.name,
                        address: o.address.unwrap_or_default(),
                        image: o.image,
                        category: Category::Init,
                        scores: None,
                        created_ms: now_ms(),
                        ready_ms: None,
                        scored_ms: None,
                        sundown_ms: None,
                        sundown_version: None,
                        sundown_balancers: Vec::new(),
                    });
                }
                // Taken meanwhile (by a container Docker had not listed yet): next round.
                Err(DockerError::NameInUse { .. }) => {
                    warn!("container name {name} is in use; trying again next round")
                }
                Err(e) => error!("creating container {name} failed: {e}"),
            }
        }
    }

    pub(super) fn start_removal(&mut self, id: &str, name: &str) {
        if let Some(t) = self.pool.get_mut(id) {
            if t.stopping {
                return;
            }
            t.stopping = true;
        }
        let docker = self.docker.clone();
        let grace = self.cfg.stop_timeout;
        let (id, name) = (id.to_string(), name.to_string());
        self.removals.spawn(async move {
            let r = docker.stop_and_remove(&id, grace).await;
            (id, name, r)
        });
    }

    /// A background stop-and-remove ended.
    pub(super) fn removed(&mut self, id: &str, name: &str, result: Result<(), DockerError>) {
        match result {
            Ok(()) => {
                // The record goes with the next persist.
                self.pool.remove(id);
                self.log.record(
                    EventKind::ContainerRemoved,
                    format!("{name} stopped and removed"),
                    serde_json::json!({ "id": id, "name": name }),
                );
            }
            Err(e) => {
                // Try again on a later tick.
                warn!("stopping {name} failed, will retry: {e}");
                if let Some(t) = self.pool.get_mut(id) {
                    t.stopping = false;
                }
            }
        }
    }

    /// Writes what changed since the last successful write (records, forgotten ids, the
    /// desired size) in one atomic pipeline, then the new events. Everything is written again
    /// when Redis comes back after an outage or turns out to have lost its data.
    pub(super) async fn persist(&mut self) {
        let recovering = !self.redis_ok;
        // Redis restarted without its data (or was flushed) while answering all along: the
        // desired size, always written, is gone. Write everything again.
        let lost = match self.store.desired().await {
            Ok(d) => d.is_none(),
            Err(e) => return self.redis_down(&e.to_string()),
        };
        if lost && !self.saved.is_empty() {
            warn!("redis lost the agent's state; writing it again");
        }
        if recovering || lost {
            self.saved.clear();
            self.saved_desired = None;
        }
        let changed: Vec<&Container> = self
            .pool
            .values()
            .map(|t| &t.c)
            .filter(|c| self.saved.get(&c.id) != Some(c))
            .collect();
        let forgotten: Vec<String> = self
            .saved
            .keys()
            .filter(|id| !self.pool.contains_key(*id))
            .cloned()
            .collect();
        let desired = (self.saved_desired != Some(self.desired)).then_some(self.desired);
        let result = self.store.save_changes(&changed, &forgotten, desired).await;
        if let Err(e) = result {
            return self.redis_down(&e.to_string());
        }
        let changed: HashMap<String, Container> = changed
            .into_iter()
            .map(|c| (c.id.clone(), c.clone()))
            .collect();
        self.saved.extend(changed);
        for id in &forgotten {
            self.saved.remove(id);
        }
        self.saved_desired = Some(self.desired);
        self.redis_ok = true;
        // A Redis that came back empty lost the event log too: write back what memory holds.
        let log_lost = (recovering || lost)
            && matches!(self.store.events(1).await, Ok(list) if list.is_empty());
        match self
            .log
            .flush(&self.store, self.cfg.events_max, log_lost)
            .await
        {
            Ok(written) if recovering || lost => info!(
                "redis reachable again; state re-saved ({written} event(s) written{})",
                if log_lost {
                    ", the event log had been lost"
                } else {
                    ""
                }
            ),
            Ok(_) => {}
            // The unsaved events stay queued for the next round.
            Err(e) => self.redis_down(&e.to_string()),
        }
    }
}
