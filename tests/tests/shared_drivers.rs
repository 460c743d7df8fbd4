//! Cache, queue and rate limiter shared by several real `sockhost` nodes through the real
//! `libsockhost_redis.so` / `libsockhost_redis_cluster.so`, over a real `redis-server` and a
//! real three-master Redis Cluster: one limit for all nodes, durable webhooks, dead letters,
//! cache replay across nodes, and an outage of the backend.

mod redis {
    use sockhost_tests::{
        backends::RedisServer,
        cluster::Bus,
        pusher::{Client, TestApp},
    };

    sockhost_tests::shared_driver_scenarios!(RedisServer::start);

    #[tokio::test]
    async fn a_limiter_told_to_fail_closed_refuses_while_redis_is_down() {
        let mut redis = RedisServer::start();
        let bus = Bus::redis(&redis.url(), "t:")
            .with("[rate_limiter]\ndriver = \"redis\"\nfail_open = false")
            .env("REDIS_URL", &redis.url());
        let server = sockhost_tests::cluster::node(
            &bus,
            "[[app_manager.array.apps]]\nid = \"closed\"\nkey = \"closed-key\"\nsecret = \"closed-secret\"\n\
             max_connections_per_ip_per_minute = 100\n",
        );
        let app = TestApp::new("closed", "closed-key", "closed-secret");
        let _fine = Client::connect(&server.ws_url(&app.key)).await;
        redis.kill();
        let mut refused_client = Client::connect_raw(&server.ws_url(&app.key)).await;
        refused_client.expect_error(4100).await;
    }
}

mod redis_cluster {
    use sockhost_tests::backends::RedisCluster;

    sockhost_tests::shared_driver_scenarios!(RedisCluster::start);
}
