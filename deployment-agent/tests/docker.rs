//! The Docker edge against the real engine and the playground image.

mod common;

use std::time::{Duration, Instant};

use common::{LabelCleanup, TestNetwork, PLAYGROUND_PORT};
use deployment_agent::docker::{is_unavailable, ContainerSpec, Docker, DockerError};
use futures_util::StreamExt;

fn spec(app: &str, n: usize, image: &str, network: Option<&TestNetwork>) -> ContainerSpec {
    ContainerSpec {
        name: format!("{app}-{n}"),
        image: image.to_owned(),
        app: app.to_owned(),
        target_port: PLAYGROUND_PORT,
        network: network.map(|n| n.name.clone()),
        cpus: Some(1.0),
        memory_bytes: Some(64 * 1024 * 1024),
        env: vec![format!("PORT={PLAYGROUND_PORT}")],
    }
}

#[tokio::test]
async fn started_container_is_reachable_listed_and_removed() {
    common::init_logging();
    let Some((docker, image)) = common::docker_and_image().await else {
        return;
    };
    docker
        .ensure_image(&image, 0)
        .await
        .expect("image is local");
    let app = common::unique_app();
    let network = TestNetwork::create(&app);
    let _cleanup = LabelCleanup(app.clone());

    let spec = spec(&app, 1, &image, Some(&network));
    let started = docker
        .create_and_start(&spec)
        .await
        .expect("create and start");
    assert!(started.running, "{started:?}");
    assert_eq!(started.name, spec.name);
    assert_eq!(started.image, image);
    let address = started
        .address
        .clone()
        .expect("an address on the test network");
    assert!(address.ends_with(":5000"), "{address}");

    common::wait_http_ok(&address, "/health", Duration::from_secs(15))
        .await
        .expect("/health answers 200 from the host");

    // Limits, restart policy and labels as asked.
    let inspected = common::docker_cli(&[
        "inspect",
        "--format",
        "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.RestartPolicy.Name}} \
         {{index .Config.Labels \"rustybalancer.managed\"}} {{index .Config.Labels \"rustybalancer.port\"}}",
        &started.id,
    ])
    .expect("docker inspect");
    assert_eq!(inspected, "1000000000 67108864 no true 5000");

    let ours = docker.list_ours(&app).await.expect("list ours");
    assert_eq!(ours, vec![started.clone()], "list_ours sees exactly it");
    let others = docker.list_ours(&common::unique_app()).await.expect("list");
    assert!(others.is_empty(), "another app's list is empty: {others:?}");
    assert_eq!(
        docker.inspect(&started.id).await.expect("inspect"),
        Some(started.clone())
    );

    docker
        .stop_and_remove(&started.id, Duration::from_secs(5))
        .await
        .expect("stop and remove");
    docker
        .stop_and_remove(&started.id, Duration::from_secs(5))
        .await
        .expect("stop and remove again is fine");
    assert_eq!(docker.inspect(&started.id).await.expect("inspect"), None);
    assert!(docker.list_ours(&app).await.expect("list").is_empty());
}

#[tokio::test]
async fn default_network_gives_a_reachable_address_and_stopped_ones_are_listed() {
    common::init_logging();
    let Some((docker, image)) = common::docker_and_image().await else {
        return;
    };
    let app = common::unique_app();
    let _cleanup = LabelCleanup(app.clone());
    let started = docker
        .create_and_start(&spec(&app, 1, &image, None))
        .await
        .expect("create and start on the default bridge");
    let address = started.address.clone().expect("an address on bridge");
    common::wait_http_ok(&address, "/health", Duration::from_secs(15))
        .await
        .expect("/health answers 200 from the host");

    common::docker_cli(&["stop", "-t", "1", &started.id]).expect("docker stop");
    let ours = docker.list_ours(&app).await.expect("list ours");
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert!(
        !ours[0].running,
        "a stopped container is listed as not running"
    );
    assert_eq!(ours[0].address, None, "a stopped container has no address");
}

#[tokio::test]
async fn name_conflict_is_name_in_use() {
    common::init_logging();
    let Some((docker, image)) = common::docker_and_image().await else {
        return;
    };
    let app = common::unique_app();
    let _cleanup = LabelCleanup(app.clone());
    let spec = spec(&app, 1, &image, None);
    docker.create_and_start(&spec).await.expect("first create");
    match docker.create_and_start(&spec).await {
        Err(DockerError::NameInUse { name }) => assert_eq!(name, spec.name),
        other => panic!("expected NameInUse, got {other:?}"),
    }
    assert_eq!(docker.list_ours(&app).await.expect("list").len(), 1);
}

#[tokio::test]
async fn missing_image_gives_a_clear_error_quickly() {
    common::init_logging();
    let Some(docker) = common::docker().await else {
        return;
    };
    let app = common::unique_app();
    let image = format!("rustybalancer/{app}-missing:never");
    let started = Instant::now();
    let err = docker
        .ensure_image(&image, 0)
        .await
        .expect_err("a missing image cannot be had here");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, DockerError::ImageUnavailable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&image), "{err}");
    assert!(!is_unavailable(&err));

    // One retry, after a backoff of a second.
    let started = Instant::now();
    let err = docker
        .ensure_image(&image, 1)
        .await
        .expect_err("still missing");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("2 attempt(s)"), "{err}");

    let _cleanup = LabelCleanup(app.clone());
    let err = docker
        .create_and_start(&spec(&app, 1, &image, None))
        .await
        .expect_err("cannot create from a missing image");
    assert!(
        matches!(err, DockerError::ImageUnavailable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&image), "{err}");
}

#[tokio::test]
async fn stats_stream_reports_memory_and_growing_cpu_under_load() {
    common::init_logging();
    let Some((docker, image)) = common::docker_and_image().await else {
        return;
    };
    let app = common::unique_app();
    let network = TestNetwork::create(&app);
    let _cleanup = LabelCleanup(app.clone());
    let started = docker
        .create_and_start(&spec(&app, 1, &image, Some(&network)))
        .await
        .expect("create and start");
    let address = started.address.clone().expect("address");
    common::wait_http_ok(&address, "/health", Duration::from_secs(15))
        .await
        .expect("healthy");

    let load = tokio::spawn({
        let address = address.clone();
        async move {
            let until = Instant::now() + Duration::from_secs(6);
            let mut ok = 0;
            while Instant::now() < until {
                if let Ok((200, _)) = common::http_get(&address, "/cpu?ms=200").await {
                    ok += 1;
                }
            }
            ok
        }
    });

    let mut stream = Box::pin(docker.stats_stream(&started.id));
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while samples.len() < 5 && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(sample))) => samples.push(sample),
            Ok(Some(Err(e))) => panic!("stats error: {e}"),
            Ok(None) => panic!("stats stream ended early"),
            Err(_) => panic!("no stats frame within 10s"),
        }
    }
    let served = load.await.expect("load task");
    assert!(served > 0, "the /cpu endpoint answered");
    assert!(samples.len() >= 5, "{samples:?}");

    for s in &samples {
        assert_eq!(s.mem_limit, 64 * 1024 * 1024, "{s:?}");
        assert!(s.mem_used > 0 && s.mem_used < s.mem_limit, "{s:?}");
        assert!(s.online_cpus >= 1, "{s:?}");
        assert!(s.system_ns > 0 && s.at_ms > 0, "{s:?}");
    }
    for pair in samples.windows(2) {
        assert!(pair[1].cpu_total_ns >= pair[0].cpu_total_ns, "{pair:?}");
        assert!(pair[1].system_ns > pair[0].system_ns, "{pair:?}");
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let burned = last.cpu_total_ns - first.cpu_total_ns;
    assert!(
        burned > 300_000_000,
        "at least 0.3 s of CPU burned under load, got {burned} ns"
    );
    // Docker's previous-read values line up with the frame before.
    assert_eq!(samples[1].precpu_total_ns, samples[0].cpu_total_ns);

    // Once the container is gone the stream ends (possibly after an error), never hangs.
    docker
        .stop_and_remove(&started.id, Duration::from_secs(2))
        .await
        .expect("stop and remove");
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                log::info!("stats stream of a removed container: {e}");
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stats stream ended after removal");
}

#[tokio::test]
async fn events_report_die_and_destroy() {
    common::init_logging();
    let Some((docker, image)) = common::docker_and_image().await else {
        return;
    };
    let app = common::unique_app();
    let _cleanup = LabelCleanup(app.clone());
    let mut events = Box::pin(docker.events(&app));
    // Not polled before the actions below: the stream must still see them.
    let started = docker
        .create_and_start(&spec(&app, 1, &image, None))
        .await
        .expect("create and start");
    docker
        .stop_and_remove(&started.id, Duration::from_secs(2))
        .await
        .expect("stop and remove");

    let mut seen = Vec::new();
    while !seen.contains(&"destroy".to_owned()) {
        match tokio::time::timeout(Duration::from_secs(15), events.next()).await {
            Ok(Some(Ok(event))) => {
                assert_eq!(event.id, started.id);
                seen.push(event.action);
            }
            other => panic!("expected die and destroy events, got {other:?} after {seen:?}"),
        }
    }
    assert_eq!(seen, vec!["die".to_owned(), "destroy".to_owned()]);
}

#[tokio::test]
async fn stop_and_remove_of_an_unknown_container_is_fine() {
    let Some(docker) = common::docker().await else {
        return;
    };
    docker
        .stop_and_remove("rbtest-no-such-container", Duration::from_secs(1))
        .await
        .expect("idempotent");
    assert_eq!(
        docker
            .inspect("rbtest-no-such-container")
            .await
            .expect("inspect"),
        None
    );
}

#[tokio::test]
async fn own_network_is_none_outside_a_container() {
    let Some(docker) = common::docker().await else {
        return;
    };
    let network = docker.own_network().await.expect("own network");
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let is_container = common::docker_cli(&["inspect", hostname.trim()]).is_ok();
    if !is_container {
        assert_eq!(network, None);
    }
}

#[tokio::test]
async fn unreachable_engine_and_bad_host_are_told_apart() {
    let err = Docker::connect("unix:///nonexistent/rbtest-docker.sock")
        .await
        .expect_err("no socket");
    assert!(is_unavailable(&err), "{err:?}");

    let err = Docker::connect("tcp://127.0.0.1:1")
        .await
        .expect_err("nothing listens on port 1");
    assert!(is_unavailable(&err), "{err:?}");

    let err = Docker::connect("ftp://example")
        .await
        .expect_err("bad scheme");
    assert!(matches!(err, DockerError::InvalidHost { .. }), "{err:?}");
    assert!(err.to_string().contains("ftp://example"), "{err}");
}
