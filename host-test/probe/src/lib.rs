//! A test-only component: tries to read, write, list the environment and
//! reach the network from inside a sandbox built by `vd-cred-host`.

#[cfg(target_arch = "wasm32")]
mod probes;

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({ world: "sandbox-probe", path: "wit" });

    use crate::probes;
    use exports::vibedata::sandbox_probe::probe::Guest;

    struct Probe;
    export!(Probe);

    impl Guest for Probe {
        fn read_file(path: String) -> Result<String, String> {
            probes::read_file(path)
        }

        fn write_file(path: String, contents: String) -> Result<(), String> {
            probes::write_file(path, contents)
        }

        fn environment() -> Vec<(String, String)> {
            probes::environment()
        }

        fn tcp_connect(address: String) -> Result<(), String> {
            probes::tcp_connect(address)
        }

        fn udp_send(address: String) -> Result<(), String> {
            probes::udp_send(address)
        }

        fn resolve(name: String) -> Result<Vec<String>, String> {
            probes::resolve(name)
        }

        fn preopens() -> Vec<String> {
            probes::preopens()
        }

        fn http_get(url: String) -> Result<u16, String> {
            probes::http_get(url)
        }

        fn http_post(url: String, body: String) -> Result<String, String> {
            probes::http_post(url, body)
        }
    }
}
