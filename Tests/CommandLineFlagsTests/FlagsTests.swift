import CommandLineFlags
import Testing

@Test func valuesInBothSpellingsSwitchesAndPositionals() throws {
    let flags = try Flags(["--key-file", "a.json", "pos", "--uid=u1", "--json", "--stage=true", "second"],
                          valueFlags: ["key-file", "uid"], switchFlags: ["json", "stage", "force"])
    #expect(flags.value("key-file") == "a.json")
    #expect(flags.value("uid") == "u1")
    #expect(flags.has("json") && flags.has("stage") && !flags.has("force"))
    #expect(flags.positionals == ["pos", "second"])
    #expect(flags.value("absent") == nil)
}

@Test func theLastValueWinsAndAValueMayLookLikeAFlag() throws {
    let flags = try Flags(["--socket", "a", "--socket", "--b", "--empty="], valueFlags: ["socket", "empty"])
    #expect(flags.value("socket") == "--b")
    #expect(flags.value("empty") == "")
}

@Test func usageErrorsNameTheFlag() {
    func message(_ args: [String], positionals: Bool = true, hint: String = "") -> String? {
        do {
            _ = try Flags(args, valueFlags: ["socket"], switchFlags: ["json"], allowsPositionals: positionals, unknownFlagHint: hint)
            return nil
        } catch { return error.message }
    }
    #expect(message(["--nope"]) == "unknown flag --nope")
    #expect(message(["--nope=1"], hint: " (see kekd serve --help)") == "unknown flag --nope (see kekd serve --help)")
    #expect(message(["--socket"]) == "--socket needs a value")
    #expect(message(["--json=false"]) == "--json takes no value")
    #expect(message(["stray"], positionals: false) == "unexpected argument stray")
    #expect(message(["-x"], positionals: false) == "unexpected argument -x")
    #expect(message(["--"], positionals: false) == "unexpected argument --")
    #expect(message(["stray", "--json"]) == nil)
}

@Test func prefixedFlagsKeepTheirOrderAndRepeat() throws {
    let flags = try Flags(["--decrypt-also", "file", "--backend=vault", "--decrypt-also-key-file=k", "--decrypt-also", "pkcs11"],
                          valueFlags: ["backend"], valuePrefixes: ["decrypt-also"])
    #expect(flags.prefixed.map(\.name) == ["decrypt-also", "decrypt-also-key-file", "decrypt-also"])
    #expect(flags.prefixed.map(\.value) == ["file", "k", "pkcs11"])
    #expect(flags.value("backend") == "vault")
    // A flag that merely starts with the prefix's letters is not one of its family.
    #expect(throws: UsageError(message: "unknown flag --decrypt-alsox")) {
        try Flags(["--decrypt-alsox", "1"], valueFlags: [], valuePrefixes: ["decrypt-also"])
    }
}

@Test func typedValues() throws {
    let flags = try Flags(["--size", "4Mi", "--n", "12", "--t", "500ms", "--uids", " 0, 1000 ", "--bad", "x"],
                          valueFlags: ["size", "n", "t", "uids", "bad", "empty"])
    #expect(try flags.int("size", default: 0) == 4 << 20)
    #expect(try flags.int("n", default: 0, min: 1) == 12)
    #expect(try flags.int("missing", default: 7) == 7)
    #expect(try flags.seconds("t", default: 0) == 0.5)
    #expect(try flags.seconds("missing", default: 3) == 3)
    #expect(try flags.uidList("uids") == [0, 1000])
    #expect(try flags.uidList("missing") == nil)
    #expect(throws: UsageError(message: "--n: expected a number ≥ 13, got 12")) { try flags.int("n", default: 0, min: 13) }
    #expect(throws: UsageError(message: "--bad: expected a duration like 5s, 10m, 720h, got x")) { try flags.seconds("bad", default: 0) }
    #expect(throws: UsageError(message: "--bad must be comma-separated numbers, got x")) { try flags.uidList("bad") }
    #expect(throws: UsageError(message: "--empty is required")) { try flags.required("empty") }
    #expect(try flags.required("n") == "12")
}

@Test func sizesAndDurations() {
    #expect(parseSize("64Ki") == 65536)
    #expect(parseSize("1Gi") == 1 << 30)
    #expect(parseSize("2K") == 2000)
    #expect(parseSize("3M") == 3_000_000)
    #expect(parseSize("-1Ki") == nil)
    #expect(parseSize("\(Int.max)Ki") == nil)
    #expect(parseSize("4 Mi") == nil)
    #expect(parseDuration("10m") == 600)
    #expect(parseDuration("720h") == 2_592_000.0)
    #expect(parseDuration("1.5s") == 1.5)
    #expect(parseDuration("7") == 7)
    #expect(parseDuration("-1s") == nil)
    #expect(parseDuration("inf") == nil)
    #expect(parseDuration("30d") == 2_592_000.0)
    #expect(parseDuration("1h30m") == 5400)
    #expect(parseDuration("1m500ms") == 60.5)
    #expect(parseDuration("") == nil)
    #expect(parseDuration("5w") == nil)
    #expect(parseDuration("h") == nil)
    #expect(parseDuration("5s3") == nil)
    #expect(parseDuration("banana") == nil)
    #expect(parseDuration("nan") == nil)
}

@Test func unitPartsFollowTheGivenTable() {
    let go: [(suffix: String, factor: Double)] = [("us", 1e-6), ("ms", 1e-3), ("s", 1), ("m", 60)]
    #expect(sumOfUnitParts("1m30s", units: go) == 90)
    #expect(sumOfUnitParts("250ms", units: go) == 0.25)
    #expect(sumOfUnitParts("1d", units: go) == nil)
    #expect(sumOfUnitParts("30", units: go) == nil)
    #expect(sumOfUnitParts("", units: go) == nil)
}
