// The status codes and their names are a wire and monitoring contract (grpc/doc/statuscodes.md).
import GRPCCodes
import Testing

@Suite struct GRPCStatusCodeTests {
    @Test func codesAndNamesMatchTheGRPCSpecification() {
        let specification: [(Int, String)] = [
            (0, "OK"), (1, "CANCELLED"), (2, "UNKNOWN"), (3, "INVALID_ARGUMENT"), (4, "DEADLINE_EXCEEDED"),
            (5, "NOT_FOUND"), (6, "ALREADY_EXISTS"), (7, "PERMISSION_DENIED"), (8, "RESOURCE_EXHAUSTED"),
            (9, "FAILED_PRECONDITION"), (10, "ABORTED"), (11, "OUT_OF_RANGE"), (12, "UNIMPLEMENTED"), (13, "INTERNAL"),
            (14, "UNAVAILABLE"), (15, "DATA_LOSS"), (16, "UNAUTHENTICATED"),
        ]
        #expect(GRPCStatusCode.allCases.count == specification.count)
        for (number, name) in specification {
            #expect(GRPCStatusCode(rawValue: number)?.name == name, "\(number)")
        }
        #expect(GRPCStatusCode(rawValue: 17) == nil)
        #expect(GRPCStatusCode.allCases.map(\.rawValue) == Array(0...16), "allCases is in code order (metrics index by it)")
    }
}
