import Testing
import YAML

@Suite struct YAMLReaderTests {
    @Test func kubeAPIServerManifest() throws {
        let pod = try YAML.parse(Fixtures.kubeAPIServerManifest)
        #expect(pod["kind"]?.string == "Pod")
        #expect(pod["metadata"]?["creationTimestamp"]?.isNull == true)
        #expect(pod["metadata"]?["annotations"]?["kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint"]?.string
                == "10.0.0.10:6443")
        let container = try #require(pod["spec"]?["containers"]?[0])
        let command = try #require(container["command"]?.sequence).compactMap(\.string)
        #expect(command.count == 8)
        #expect(command[0] == "kube-apiserver")
        // The trailing comment is not part of the value.
        #expect(command[5] == "--encryption-provider-config=/etc/kubernetes/enc/enc.yaml")
        #expect(container["image"]?.string == "registry.k8s.io/kube-apiserver:v1.30.2")
        #expect(container["livenessProbe"]?["httpGet"]?["port"]?.string == "6443")
        let mounts = try #require(container["volumeMounts"]?.sequence)
        #expect(mounts.map { $0["mountPath"]?.string } == ["/etc/ssl/certs", "/etc/kubernetes/enc", "/var/run/kmsplugin"])
        #expect(mounts[2]["readOnly"] == nil)
        let volumes = try #require(pod["spec"]?["volumes"]?.sequence)
        #expect(volumes.map { $0["hostPath"]?["path"]?.string } == ["/etc/ssl/certs", "/etc/kubernetes/enc", "/var/run/kmsplugin"])
        #expect(pod["status"] == .mapping([]))
        // Document order is kept.
        #expect(pod.entries?.map(\.key) == ["apiVersion", "kind", "metadata", "spec", "status"])
    }

    @Test func encryptionConfiguration() throws {
        let config = try YAML.parse(Fixtures.encryptionConfiguration)
        let resource = try #require(config["resources"]?[0])
        #expect(resource["resources"] == .sequence([.scalar("secrets"), .scalar("configmaps")]))
        let providers = try #require(resource["providers"]?.sequence)
        #expect(providers.count == 2)
        #expect(providers[0]["kms"]?["apiVersion"]?.string == "v2")
        #expect(providers[0]["kms"]?["endpoint"]?.string == "unix:///var/run/kmsplugin/socket.sock")
        #expect(providers[0]["kms"]?["cachesize"] == nil)
        #expect(providers[1] == .mapping([(key: "identity", value: .mapping([]))]))
    }

    @Test func adminKubeconfig() throws {
        let config = try YAML.parse(Fixtures.adminConf)
        #expect(config["current-context"]?.string == "kubernetes-admin@kubernetes")
        #expect(config["clusters"]?[0]?["cluster"]?["server"]?.string == "https://10.0.0.10:6443")
        #expect(config["clusters"]?[0]?["cluster"]?["certificate-authority-data"]?.string?.hasSuffix("=") == true)
        #expect(config["contexts"]?[0]?["context"]?["user"]?.string == "kubernetes-admin")
        #expect(config["users"]?[0]?["user"]?["client-key-data"]?.string?.hasPrefix("LS0t") == true)
        #expect(config["preferences"] == .mapping([]))
    }

    @Test func scalars() throws {
        let doc = try YAML.parse("""
            plain: hello world   # comment
            hash: a#b
            url: http://x:1/y
            single: 'it''s # not a comment'
            double: "tab\\there \\"q\\" \\\\ \\u00e9\\x41\\U0001F600 \\/"
            empty:
            tilde: ~
            null1: null
            quotedNull: "null"
            number: 0600
            emptyQuoted: ''
            "quoted key": 1
            'single key': 2
            """)
        #expect(doc["plain"]?.string == "hello world")
        #expect(doc["hash"]?.string == "a#b")
        #expect(doc["url"]?.string == "http://x:1/y")
        #expect(doc["single"]?.string == "it's # not a comment")
        #expect(doc["double"]?.string == "tab\there \"q\" \\ \u{e9}A\u{1F600} /")
        #expect(doc["empty"]?.isNull == true)
        #expect(doc["tilde"]?.isNull == true)
        #expect(doc["null1"]?.isNull == true)
        #expect(doc["quotedNull"]?.string == "null")
        #expect(doc["number"]?.string == "0600")
        #expect(doc["emptyQuoted"]?.string == "")
        #expect(doc["quoted key"]?.string == "1")
        #expect(doc["single key"]?.string == "2")
    }

    @Test func sequencesAndFlow() throws {
        let doc = try YAML.parse("""
            - a
            - - b
              - c
            -
              d: 1
            - e: [x, 'y', "z", [], {}]
              f: {k: v, n: , "q": [1]}
            -
            - []
            """)
        #expect(doc == .sequence([
            .scalar("a"),
            .sequence([.scalar("b"), .scalar("c")]),
            .mapping([(key: "d", value: .scalar("1"))]),
            .mapping([
                (key: "e", value: .sequence([.scalar("x"), .scalar("y"), .scalar("z"), .sequence([]), .mapping([])])),
                (key: "f", value: .mapping([(key: "k", value: .scalar("v")), (key: "n", value: .null),
                                            (key: "q", value: .sequence([.scalar("1")]))])),
            ]),
            .null,
            .sequence([]),
        ]))
    }

    @Test func documents() throws {
        let docs = try YAML.parseDocuments("# leading comment\na: 1\n---\nb: 2\n...\n---\n- c\n")
        #expect(docs == [.mapping([(key: "a", value: .scalar("1"))]), .mapping([(key: "b", value: .scalar("2"))]),
                         .sequence([.scalar("c")])])
        #expect(try YAML.parseDocuments("") == [])
        #expect(try YAML.parse("") == .null)
        #expect(try YAML.parse("\r\nk: v\r\n") == .mapping([(key: "k", value: .scalar("v"))]))
        #expect(throws: YAMLError.self) { try YAML.parse("a: 1\n---\nb: 2\n") }
    }

    @Test func deepNestingIsRefusedNotRecursed() throws {
        let deepBlock = String(repeating: "- ", count: 10_000) + "x\n"
        let deepFlow = "a: " + String(repeating: "[", count: 10_000) + "\n"
        for text in [deepBlock, deepFlow] {
            #expect { try YAML.parse(text) } throws: { ($0 as? YAMLError)?.message.contains("nested deeper") == true }
        }
        let ok = String(repeating: "[", count: 60) + String(repeating: "]", count: 60)
        #expect(throws: Never.self) { try YAML.parse(ok) }
    }

    @Test(arguments: [
        ("a: 1\n  b: 2\n", 2, 3, "unexpected indentation"),
        ("a:\n\tb: 1\n", 2, 1, "tab"),
        ("a: &x 1\n", 1, 4, "anchors"),
        ("a: *x\n", 1, 4, "aliases"),
        ("a: !!str 1\n", 1, 4, "tags"),
        ("a: |\n  text\n", 1, 4, "block scalars"),
        ("a: >-\n  text\n", 1, 4, "block scalars"),
        ("a: 'open\n", 1, 4, "unterminated"),
        ("a: \"x\\q\"\n", 1, 6, "unknown escape"),
        ("a: [1, 2\n", 1, 4, "close on their line"),
        ("a: b: c\n", 1, 5, "': '"),
        ("a: 1\na: 2\n", 2, 1, "duplicate key 'a'"),
        ("k: v\n- x\n", 2, 1, "sequence item"),
        ("- x\nk: v\n", 2, 1, "lower indentation"),
        ("key: plain\n  continued\n", 2, 3, "unexpected indentation"),
        ("- plain\n  continued\n", 2, 3, "multi-line"),
        ("? complex\n", 1, 1, "complex mapping keys"),
        ("%YAML 1.2\n---\na: 1\n", 1, 1, "directives"),
        ("a: \"x\" y\n", 1, 8, "unexpected text"),
        ("a:\n  - x\n - y\n", 3, 2, "unexpected indentation"),
        ("just text\nmore: 1\n", 2, 1, "multi-line"),
    ])
    func errorsNameTheLineAndColumn(text: String, line: Int, column: Int, fragment: String) {
        do {
            let value = try YAML.parseDocuments(text)
            Issue.record("accepted \(text.debugDescription) as \(value)")
        } catch {
            #expect(error.line == line, "\(text.debugDescription): \(error)")
            #expect(error.column == column, "\(text.debugDescription): \(error)")
            #expect(error.message.contains(fragment), "\(text.debugDescription): \(error)")
            #expect(error.description.hasPrefix("line \(line), column \(column): "))
        }
    }
}
