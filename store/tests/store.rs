//! The telemetry store, the same cases on SQLite (a temporary file) and on PostgreSQL
//! (`TETHER_TEST_DATABASE_URL`, default the local server's `test` database; each test
//! creates a database of its own and drops it). A missing PostgreSQL fails the tests.

use store::{Sample, SeriesQuery, Store, bucket_ms};

const T0: i64 = 1_800_000_000_000;

fn sample(device: &str, metric: &str, ts_ms: i64, value: f64) -> Sample {
    Sample {
        device: device.into(),
        metric: metric.into(),
        ts_ms,
        value,
    }
}

fn query(device: &str, metrics: &[&str], from_ms: i64, to_ms: i64, points: u32) -> SeriesQuery {
    SeriesQuery {
        device: device.into(),
        metrics: metrics.iter().map(|m| m.to_string()).collect(),
        from_ms,
        to_ms,
        bucket_ms: bucket_ms(from_ms, to_ms, points),
    }
}

async fn round_trip_keeps_every_sample_once(store: &Store) {
    let samples: Vec<_> = (0..20)
        .flat_map(|i| {
            [
                sample("d1", "temperature", T0 + i * 1_000, 20.0 + i as f64 / 10.0),
                sample("d1", "humidity", T0 + i * 1_000, 40.0 + i as f64),
            ]
        })
        .collect();
    assert_eq!(store.insert(samples.clone()).await.unwrap(), 40);
    assert_eq!(
        store.insert(samples[..10].to_vec()).await.unwrap(),
        0,
        "a redelivered batch is stored once"
    );
    store
        .insert(vec![sample("d2", "temperature", T0, 99.0)])
        .await
        .unwrap();
    assert_eq!(store.count(Some("d1")).await.unwrap(), 40);
    assert_eq!(store.count(None).await.unwrap(), 41);
    assert_eq!(
        store.metrics("d1").await.unwrap(),
        ["humidity", "temperature"]
    );

    // A bucket narrower than the sample interval gives every sample back as it was.
    let series = store
        .series(query(
            "d1",
            &["temperature", "humidity"],
            T0,
            T0 + 20_000,
            2_000,
        ))
        .await
        .unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0].0, "temperature", "in the order asked for");
    let temperature = &series[0].1;
    assert_eq!(temperature.len(), 20);
    for (i, point) in temperature.iter().enumerate() {
        let expected = 20.0 + i as f64 / 10.0;
        assert_eq!(point.t_ms, (T0 + i as i64 * 1_000) as u64);
        assert_eq!((point.count, point.min, point.max), (1, expected, expected));
        assert!((point.avg - expected).abs() < 1e-9);
    }
    // The range is half-open and other devices never leak in.
    let series = store
        .series(query("d1", &["temperature"], T0 + 5_000, T0 + 10_000, 100))
        .await
        .unwrap();
    assert_eq!(series[0].1.len(), 5);
    assert!(
        store
            .series(query("d3", &["temperature"], T0, T0 + 20_000, 100))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_long_range_is_downsampled_to_at_most_max_points(store: &Store) {
    // A week at one sample a minute: 10,080 samples.
    let week = 7 * 86_400_000;
    let samples: Vec<_> = (0..10_080)
        .map(|i| sample("d1", "cpu", T0 + i * 60_000, (i % 100) as f64))
        .collect();
    for chunk in samples.chunks(2_000) {
        store.insert(chunk.to_vec()).await.unwrap();
    }
    let series = store
        .series(query("d1", &["cpu"], T0, T0 + week, 300))
        .await
        .unwrap();
    let points = &series[0].1;
    assert!(
        (280..=300).contains(&points.len()),
        "{} points",
        points.len()
    );
    assert_eq!(
        points.iter().map(|p| u64::from(p.count)).sum::<u64>(),
        10_080,
        "every sample counts in some bucket"
    );
    let first = points[0];
    // 2,016,000 ms buckets hold 34 samples: values 0..=33.
    assert_eq!((first.count, first.min, first.max), (34, 0.0, 33.0));
    assert!((first.avg - 16.5).abs() < 1e-9);
    assert!(points.windows(2).all(|w| w[0].t_ms < w[1].t_ms));
    assert!(points.iter().all(|p| p.min <= p.avg && p.avg <= p.max));
}

async fn pruning_deletes_only_old_samples(store: &Store) {
    let samples: Vec<_> = (0..10)
        .map(|i| sample("d1", "cpu", T0 + i * 1_000, 1.0))
        .collect();
    store.insert(samples).await.unwrap();
    assert_eq!(store.prune(T0 + 4_000).await.unwrap(), 4);
    assert_eq!(store.count(None).await.unwrap(), 6);
    assert_eq!(store.prune(T0 + 4_000).await.unwrap(), 0);
}

mod sqlite {
    use super::*;

    async fn open() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("tether-store-{:016x}", fastrand::u64(..)));
        let path = dir.join("nested").join("telemetry.db");
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .expect("SQLite opens and creates its folder");
        assert_eq!(store.kind(), "sqlite");
        (store, dir)
    }

    #[tokio::test]
    async fn round_trip() {
        let (store, dir) = open().await;
        round_trip_keeps_every_sample_once(&store).await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn downsampling() {
        let (store, dir) = open().await;
        a_long_range_is_downsampled_to_at_most_max_points(&store).await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn pruning() {
        let (store, dir) = open().await;
        pruning_deletes_only_old_samples(&store).await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn samples_survive_reopening() {
        let (store, dir) = open().await;
        store
            .insert(vec![sample("d1", "cpu", T0, 3.5)])
            .await
            .unwrap();
        drop(store);
        let path = dir.join("nested").join("telemetry.db");
        let store = Store::open(path.to_str().unwrap()).await.unwrap();
        assert_eq!(store.count(None).await.unwrap(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_unwritable_path_is_a_clear_error() {
        let error = Store::open("sqlite:///proc/tether/telemetry.db")
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}")
                .contains("cannot open the SQLite database /proc/tether/telemetry.db"),
            "{error:#}"
        );
    }
}

mod postgres {
    use super::*;

    fn admin_url() -> String {
        std::env::var("TETHER_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// A database of the test's own, dropped when this is dropped.
    struct Scratch {
        name: String,
        store: Store,
    }

    impl Scratch {
        async fn new() -> Self {
            let admin = admin_url();
            let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!("PostgreSQL must be running at {admin} for these tests (scripts/test.sh starts it): {e}")
                });
            tokio::spawn(connection);
            let name = format!("tether_test_{:016x}", fastrand::u64(..));
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("the test user may create databases");
            let base = admin.rsplit_once('/').expect("a database URL").0;
            let store = Store::open(&format!("{base}/{name}")).await.unwrap();
            assert_eq!(store.kind(), "postgres");
            Self { name, store }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let (admin, name) = (admin_url(), self.name.clone());
            // A runtime of its own: Drop cannot await, and the test's is shutting down.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Runtime::new().unwrap().block_on(async {
                    if let Ok((client, connection)) =
                        tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(connection);
                        let _ = client
                            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await;
                    }
                })
            })
            .join();
        }
    }

    #[tokio::test]
    async fn round_trip() {
        let scratch = Scratch::new().await;
        round_trip_keeps_every_sample_once(&scratch.store).await;
    }

    #[tokio::test]
    async fn downsampling() {
        let scratch = Scratch::new().await;
        a_long_range_is_downsampled_to_at_most_max_points(&scratch.store).await;
    }

    #[tokio::test]
    async fn pruning() {
        let scratch = Scratch::new().await;
        pruning_deletes_only_old_samples(&scratch.store).await;
    }

    #[tokio::test]
    async fn a_database_that_is_down_at_start_is_used_once_it_is_up() {
        let down = Store::open_or_defer("postgres://postgres@127.0.0.1:1/tether")
            .await
            .expect("a server starts while its database is down");
        let error = down.count(None).await.unwrap_err();
        assert!(
            format!("{error:#}").contains("cannot connect to PostgreSQL"),
            "{error:#}"
        );
        assert!(
            Store::open_or_defer("postgres://postgres@127.0.0.1:notaport/x")
                .await
                .is_err(),
            "a URL that does not parse is still an error"
        );
        // Deferred, then reachable: the first use connects and creates the table.
        let scratch = Scratch::new().await;
        let url = format!(
            "{}/{}",
            admin_url().rsplit_once('/').unwrap().0,
            scratch.name
        );
        let lazy = Store::open_or_defer(&url).await.unwrap();
        assert_eq!(
            lazy.insert(vec![sample("d1", "cpu", T0, 1.0)])
                .await
                .unwrap(),
            1
        );
        assert_eq!(scratch.store.count(None).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_wrong_address_is_a_clear_error() {
        let error = Store::open("postgres://nobody:secret@127.0.0.1:1/tether")
            .await
            .unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.contains("cannot open PostgreSQL at postgres://nobody:***@127.0.0.1:1/tether"),
            "{text}"
        );
        assert!(!text.contains("secret"));
    }
}
