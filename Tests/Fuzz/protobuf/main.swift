// libFuzzer harness for the protobuf codec (scripts/fuzz protobuf SECONDS).
// Every KMS v2 message type decodes the input; whatever decodes must re-encode to bytes that decode to the same
// message and re-encode identically (deterministic, stable). A decode error is fine; a trap or a mismatch is a bug.
import KMSProto
import Protobuf

func checkStable<Message: ProtoMessage>(_ type: Message.Type, _ input: ArraySlice<UInt8>) {
    guard let message = try? Message(serializedBytes: input) else { return }
    let encoded = message.serializedBytes()
    let again: Message
    do {
        again = try Message(serializedBytes: encoded[...])
    } catch {
        fatalError("\(Message.self): re-encoded bytes do not decode: \(error)")
    }
    guard again == message else { fatalError("\(Message.self): decode(encode(m)) != m") }
    guard again.serializedBytes() == encoded else { fatalError("\(Message.self): encoding is not stable") }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // Decode from a slice that does not start at index 0, as the gRPC layer hands over message bodies.
    let framed = [0xFF] + bytes + [0xFF]
    let input = framed[1..<(framed.count - 1)]
    checkStable(StatusRequest.self, input)
    checkStable(StatusResponse.self, input)
    checkStable(EncryptRequest.self, input)
    checkStable(EncryptResponse.self, input)
    checkStable(DecryptRequest.self, input)
    checkStable(DecryptResponse.self, input)
    return 0
}
