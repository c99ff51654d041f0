module github.com/heraldpush/herald/sdk/go

go 1.26.0

require (
	github.com/heraldpush/herald/api v0.0.0
	google.golang.org/protobuf v1.36.12
)

replace github.com/heraldpush/herald/api => ../../api
