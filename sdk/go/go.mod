module github.com/heraldpush/herald/sdk/go

go 1.26.0

require github.com/heraldpush/herald/api v0.0.0

replace github.com/heraldpush/herald/api => ../../api
